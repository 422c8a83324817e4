"""analysis.sql: DuckDB views over the gathered tables, read-only and closed to the file system.

The input is the fake sweep of test_analysis (Ray's layout, numbers drawn at random);
expected values are recomputed with pandas from the records the fake wrote.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_analysis import N_TRIALS, raw_records, write_fake_sweep

from analysis.gather import gather
from analysis.sql import main as sql_main
from analysis.sql import run

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory) -> tuple[Path, Path, Path]:
    storage = tmp_path_factory.mktemp("storage")
    a = write_fake_sweep(storage, "sweep_a", rng_seed=0)
    b = write_fake_sweep(storage, "sweep_b", seeds=(0, 1), error_trial=False, rng_seed=1)
    root = tmp_path_factory.mktemp("results")
    gather(a, root)
    gather(b, root)
    return root, a, b


def test_count_and_group_over_all_sweeps_match_the_records(two_sweeps):
    root, a, b = two_sweeps
    counts = run("SELECT sweep, count(*) AS n FROM trials GROUP BY sweep ORDER BY sweep", root)
    assert counts.to_dict("list") == {"sweep": ["sweep_a", "sweep_b"], "n": [N_TRIALS, 10]}
    got = run("""SELECT t."regularizer.alpha" AS alpha, avg(n.accuracy) AS acc FROM noise n
                 JOIN trials t USING (sweep, trial_id)
                 WHERE n.sweep = 'sweep_a' AND n.noise = 'gaussian' AND n.level = 0.08
                   AND t."regularizer.target" = 'pixel_th' GROUP BY alpha ORDER BY alpha""", root)
    raw = raw_records(a, "noise")
    raw = raw[(raw["regularizer.target"] == "pixel_th") & (raw["noise"] == "gaussian") & np.isclose(raw["level"], 0.08)]
    want = raw.groupby("regularizer.alpha")["accuracy"].mean()
    assert got["alpha"].tolist() == want.index.tolist()
    np.testing.assert_allclose(got["acc"], want.to_numpy())


def test_pivot_alpha_by_th(two_sweeps):
    root, a, _ = two_sweeps
    got = run("""PIVOT (SELECT t."regularizer.alpha" AS alpha, t."regularizer.th" AS th, n.accuracy
                        FROM noise n JOIN trials t USING (sweep, trial_id)
                        WHERE n.sweep = 'sweep_a' AND n.noise = 'uniform' AND n.level = 0.1 AND NOT t.baseline)
                 ON th USING avg(accuracy) GROUP BY alpha ORDER BY alpha""", root)
    raw = raw_records(a, "noise")
    raw = raw[(raw["regularizer.target"] == "pixel_th") & (raw["noise"] == "uniform") & np.isclose(raw["level"], 0.1)]
    want = raw.pivot_table(index="regularizer.alpha", columns="regularizer.th", values="accuracy", aggfunc="mean")
    assert got.shape == (2, 3)
    for th in want.columns:
        np.testing.assert_allclose(got[str(th)], want[th].to_numpy())


@pytest.mark.parametrize("sql", [
    "COPY (SELECT 1) TO '{tmp}/stolen.csv'",
    "COPY trials TO '{tmp}/stolen.parquet' (FORMAT parquet)",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_parquet('{tables}/trials/sweep_a.parquet')",
    "ATTACH '{tmp}/x.duckdb' AS x",
    "SET enable_external_access = true",
    "INSERT INTO trials SELECT * FROM trials",
    "DELETE FROM noise",
])
def test_user_sql_can_neither_write_nor_read_files(two_sweeps, tmp_path, capsys, sql):
    root, _, _ = two_sweeps
    before = {p: p.stat().st_mtime_ns for p in (root / "tables").rglob("*.parquet")}
    code = sql_main([sql.format(tmp=tmp_path, tables=root / "tables"), "--results", str(root)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: SQL: ") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []
    assert {p: p.stat().st_mtime_ns for p in (root / "tables").rglob("*.parquet")} == before


def test_bad_sql_is_one_line_exit_2_without_traceback(two_sweeps):
    root, _, _ = two_sweeps
    for sql, word in (("SELEC 1", "syntax error"), ("SELECT nosuch FROM trials", "nosuch"),
                      ("SELECT * FROM nosuchtable", "nosuchtable")):
        proc = subprocess.run([sys.executable, "-m", "analysis.sql", sql, "--results", str(root)],
                              capture_output=True, text=True, cwd=PROJECT)
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1 and word in proc.stderr, proc.stderr


def test_out_writes_csv_and_parquet_and_refuses_other_paths(two_sweeps, tmp_path, capsys):
    root, _, _ = two_sweeps
    sql = "SELECT sweep, trial_id, clean_acc FROM trials WHERE status = 'TERMINATED' ORDER BY ALL"
    assert sql_main([sql, "--results", str(root), "--out", str(tmp_path / "r.csv")]) == 0
    assert sql_main([sql, "--results", str(root), "--out", str(tmp_path / "r.parquet")]) == 0
    csv, pq = pd.read_csv(tmp_path / "r.csv"), pd.read_parquet(tmp_path / "r.parquet")
    assert len(csv) == len(pq) == N_TRIALS - 1 + 10
    np.testing.assert_allclose(csv["clean_acc"], pq["clean_acc"])
    capsys.readouterr()
    for bad in (tmp_path, tmp_path / "r.txt"):
        assert sql_main([sql, "--results", str(root), "--out", str(bad)]) == 2
        assert "--out" in capsys.readouterr().err


def test_list_shows_every_view_with_columns(two_sweeps, capsys):
    root, _, _ = two_sweeps
    assert sql_main(["--list", "--results", str(root)]) == 0
    out = capsys.readouterr().out
    assert "sweeps: sweep_a, sweep_b" in out
    for line in ("trials  (26 rows)", "noise  (", "adversarial_summary  (", "  regularizer.alpha  DOUBLE",
                 "boundary  (0 rows)"):
        assert line in out, line


def test_sweep_filter_and_unknown_sweep(two_sweeps, capsys):
    root, _, _ = two_sweeps
    assert sql_main(["SELECT count(*) AS n FROM trials", "--results", str(root), "--sweep", "sweep_b"]) == 0
    assert capsys.readouterr().out.split() == ["n", "10"]
    assert sql_main(["SELECT 1", "--results", str(root), "--sweep", "nope"]) == 2
    assert "--sweep ['nope'] not gathered" in capsys.readouterr().err


def test_sweeps_with_conflicting_column_types_and_stale_files(tmp_path, capsys):
    """A column that is a number in one sweep and a string in another still reads (as text);
    a file of another schema version is refused with the fix, exit 2."""
    from analysis import store

    (tmp_path / "tables").mkdir()
    a = pd.DataFrame({"sweep": ["a", "a"], "trial_id": ["1", "2"], "accuracy": [1, 0], "note": [1.0, 2.0]})
    b = pd.DataFrame({"sweep": ["b"], "trial_id": ["1"], "accuracy": [0.5], "note": ["x"]})
    for name, df in (("a", a), ("b", b)):
        store.write_atomic(store.to_arrow(df, "clean", name), store.sweep_file(tmp_path, "clean", name))
    got = run("SELECT sweep, accuracy, note FROM clean ORDER BY sweep, trial_id", tmp_path)
    assert got["accuracy"].tolist() == [1.0, 0.0, 0.5]
    assert [str(v) for v in got["note"]] == ["1.0", "2.0", "x"]
    old = store.to_arrow(a, "clean", "old")
    old = old.replace_schema_metadata({**old.schema.metadata, b"neuroreg.schema_version": b"0"})
    store.write_atomic(old, store.sweep_file(tmp_path, "clean", "old"))
    assert sql_main(["SELECT count(*) FROM clean", "--results", str(tmp_path)]) == 2
    assert "re-gather" in capsys.readouterr().err
