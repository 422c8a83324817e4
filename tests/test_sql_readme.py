"""The SQL examples of analysis/README.md and README.md, run verbatim.

Each ``python -m analysis.sql "..."`` block is taken from the Markdown as written (shell
quoting undone) and run over two gathered fake sweeps (test_analysis); where the README shows
the output, the result must have the columns its header shows. A renamed column or view
breaks the test, not the reader."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_analysis import write_fake_sweep

from analysis.gather import gather
from analysis.sql import run
from neuroreg import provenance

PROJECT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r'```bash\n(?:\.venv/bin/)?python -m analysis\.sql "\n(?P<sql>.*?)"\n```\n(?:```\n(?P<out>.*?)```)?',
                   re.S)
ONE_LINE = re.compile(r'^(?:\.venv/bin/)?python -m analysis\.sql "(?P<sql>[^"\n]+)"', re.M)


def examples() -> list[tuple[str, str, str | None]]:
    out = []
    for doc in ("analysis/README.md", "README.md"):
        text = (PROJECT / doc).read_text()
        for m in BLOCK.finditer(text):
            out.append((doc, m["sql"].replace('\\"', '"'), m["out"]))
        out += [(doc, m["sql"], None) for m in ONE_LINE.finditer(text)]
    return out


EXAMPLES = examples()


def test_the_readmes_have_their_examples():
    # The four worked examples of analysis/README.md, with their printed results.
    worked = [e for e in EXAMPLES if e[0] == "analysis/README.md" and e[2]]
    assert len(worked) >= 4, [e[1][:40] for e in EXAMPLES]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    storage = tmp_path_factory.mktemp("storage")
    root = tmp_path_factory.mktemp("results")
    # Two sweeps with the same configurations: the cross-sweep example has rows.
    for name, seed in (("sweep_a", 0), ("sweep_b", 1)):
        exp = write_fake_sweep(storage, name, error_trial=False, rng_seed=seed)
        provenance.write(exp, provenance.collect(1.0))  # as sweep.run records it
        gather(exp, root)
    return root


@pytest.mark.parametrize("doc, sql, shown", EXAMPLES, ids=[f"{e[0]}:{e[1].split()[0]}-{i}" for i, e in enumerate(EXAMPLES)])
def test_example_runs_verbatim_with_the_columns_shown(root, doc, sql, shown):
    got = run(sql, root)
    if not shown or "(no rows)" in shown:
        return
    header = shown.splitlines()[0].split()
    if sql.lstrip().upper().startswith("PIVOT"):
        # A pivot's columns are the data's values: the key column, then one per value.
        assert list(got.columns)[0] == header[0] and len(got.columns) >= 1
        return
    assert list(got.columns) == header, (doc, sql)
