"""latest(): the sweep gathered last, in SQL and as --latest of both CLIs (issue 23, item 5):
the README's worked examples hold for whatever sweep a reader ran last."""

from __future__ import annotations

import os

import pytest
from test_analysis import N_TRIALS, write_fake_sweep

from analysis import store
from analysis.gather import gather
from analysis.query import main as query_main
from analysis.sql import main as sql_main
from analysis.sql import run

OLD, NEW = "alpha_th-old", "it's new"  # a quote: latest() must be a well-formed SQL literal


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    storage = tmp_path_factory.mktemp("storage")
    r = tmp_path_factory.mktemp("results")
    gather(write_fake_sweep(storage, NEW, seeds=(0, 1), error_trial=False, rng_seed=1), r)
    gather(write_fake_sweep(storage, OLD, rng_seed=0), r)
    return r


def _gathered_at(root, order: list[str]) -> None:
    """Set the trials files' modification times: ``order`` from first gathered to last."""
    for i, sweep in enumerate(order):
        t = 1_700_000_000 + 100 * i
        os.utime(store.files(root, "trials", [sweep])[0], (t, t))


def test_latest_is_the_sweep_gathered_last_not_the_last_name(root):
    _gathered_at(root, [OLD, NEW])
    assert store.latest_sweep(root) == NEW
    _gathered_at(root, [NEW, OLD])
    assert store.latest_sweep(root) == OLD
    assert store.latest_sweep(root, [NEW]) == NEW  # of the --sweep ones
    assert store.latest_sweep(root, []) is None


def test_sql_latest_macro_filters_to_that_sweep(root):
    _gathered_at(root, [OLD, NEW])
    got = run("SELECT latest() AS s, count(*) AS n FROM trials WHERE sweep = latest() GROUP BY ALL", root)
    assert got.to_dict("list") == {"s": [NEW], "n": [10]}
    _gathered_at(root, [NEW, OLD])
    got = run("SELECT count(*) AS n FROM noise WHERE sweep = latest()", root)
    assert got["n"].tolist() == [len(run(f"SELECT * FROM noise WHERE sweep = '{OLD}'", root))]
    assert run("SELECT latest() AS s", root, sweeps=[NEW])["s"].tolist() == [NEW]


def test_latest_flag_of_both_clis(root, capsys):
    _gathered_at(root, [NEW, OLD])
    assert sql_main(["--results", str(root), "--latest", "SELECT DISTINCT sweep FROM trials"]) == 0
    out = capsys.readouterr().out
    assert OLD in out and NEW not in out
    assert query_main(["trials", "--results", str(root), "--latest", "--by", "sweep"]) == 0
    assert [line.split() for line in capsys.readouterr().out.splitlines()[1:]] == [[OLD, str(N_TRIALS)]]
    # with --sweep: the latest of those
    assert sql_main(["--results", str(root), "--sweep", NEW, "--latest", "SELECT DISTINCT sweep FROM trials"]) == 0
    assert NEW in capsys.readouterr().out


def test_latest_without_any_sweep_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "tables").mkdir()
    assert sql_main(["--results", str(tmp_path), "--latest", "SELECT 1"]) == 2
    assert "--latest: no sweep is gathered" in capsys.readouterr().err
    assert query_main(["trials", "--results", str(tmp_path), "--latest"]) == 2
    assert "--latest: no sweep is gathered" in capsys.readouterr().err


def test_list_names_latest(root, capsys):
    _gathered_at(root, [OLD, NEW])
    assert sql_main(["--results", str(root), "--list"]) == 0
    assert f"(latest(): {NEW})" in capsys.readouterr().out.splitlines()[0]
