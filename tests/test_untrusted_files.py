"""Untrusted files and extreme values (issue 22), at the level of the functions: the readers of
neuroreg.safe_io, archive extraction and image decoding, checkpoint checks before allocation,
evaluation's trusted config, the limits, the results-folder readers and analysis.sql's row cap.
The same classes run end to end through every CLI in tests/test_bad_input.py."""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from neuroreg.checkpoint import build_model, load_model, trainer_state
from neuroreg.config import ConfigError, RunConfig, apply_overrides, config_with
from neuroreg.errors import CheckpointError
from neuroreg.safe_io import check_regular, load_npy, npy_info, read_bytes


def _no_hang(fn, seconds: float = 10.0):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it does not return in time."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "the reader blocked"
    if "error" in out:
        raise out["error"]
    return out.get("value")


# --- safe_io --------------------------------------------------------------------------------------------


def test_fifo_and_device_are_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "p")
    with pytest.raises(ConfigError, match="FIFO"):
        _no_hang(lambda: read_bytes(tmp_path / "p", "--x", 100))
    with pytest.raises(ConfigError, match="device"):
        _no_hang(lambda: read_bytes("/dev/zero", "--x", 100))
    with pytest.raises(ConfigError, match="folder"):
        check_regular(tmp_path, "--x")
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(ConfigError, match="broken link"):
        check_regular(tmp_path / "link", "--x")


def test_read_bytes_caps_the_size(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 101)
    with pytest.raises(ConfigError, match="larger than"):
        read_bytes(tmp_path / "f", "--x", 100)
    assert read_bytes(tmp_path / "f", "--x", 101) == b"x" * 101


@pytest.mark.parametrize("arr", [np.arange(12, dtype=np.int16).reshape(3, 4), np.asfortranarray(np.random.rand(3, 5)),
                                 np.random.rand(2, 3, 4).astype(np.float32)])
def test_load_npy_round_trips_real_arrays(tmp_path, arr):
    np.save(tmp_path / "a.npy", arr)
    got = load_npy(tmp_path / "a.npy", "f")
    assert got.dtype == arr.dtype and np.array_equal(got, arr)
    assert npy_info(tmp_path / "a.npy", "f") == (arr.shape, arr.dtype)


def test_load_npy_never_unpickles(tmp_path, monkeypatch):
    ran = []

    class Payload:
        def __reduce__(self):
            return (ran.append, (1,))

    np.save(tmp_path / "o.npy", np.array([Payload()], dtype=object), allow_pickle=True)
    with pytest.raises(ConfigError, match="pickle"):
        load_npy(tmp_path / "o.npy", "f")
    assert not ran


def test_load_npy_checks_the_header_before_the_data(tmp_path):
    p = tmp_path / "big.npy"
    with open(p, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
    with pytest.raises(ConfigError, match="above the limit"):
        load_npy(p, "f")
    with pytest.raises(ConfigError, match="truncated"):
        load_npy(p, "f", max_bytes=1 << 62)
    with pytest.raises(ConfigError, match="dimensions"):
        np.save(tmp_path / "s.npy", np.float64(3.0))
        load_npy(tmp_path / "s.npy", "f")
    (tmp_path / "h.npy").write_bytes(b"\x93NUMPY\x02\x00" + (1 << 20).to_bytes(4, "little") + b"{" * 100)
    with pytest.raises(ConfigError, match="header"):
        load_npy(tmp_path / "h.npy", "f")


# --- YAML ------------------------------------------------------------------------------------------


def test_config_file_nesting_is_bounded(tmp_path):
    (tmp_path / "c.yaml").write_text("train: " + "[" * 200 + "]" * 200 + "\n")
    with pytest.raises(ConfigError, match="--config.*nest"):
        RunConfig.from_yaml(tmp_path / "c.yaml")


def test_set_values_are_strict_yaml():
    with pytest.raises(ConfigError, match="--set evaluation.noise_levels.*twice"):
        apply_overrides({}, ["evaluation.noise_levels={gaussian: [0], gaussian: [1]}"])
    assert apply_overrides({}, ["a.b=[1, {c: 2}]"]) == {"a": {"b": [1, {"c": 2}]}}


# --- limits ----------------------------------------------------------------------------------------


def test_a_limit_is_raised_by_its_environment_variable(monkeypatch):
    with pytest.raises(ConfigError, match="NEUROREG_MAX_MODEL_WIDTH"):
        RunConfig.from_dict({"model": {"width": 600}})
    monkeypatch.setenv("NEUROREG_MAX_MODEL_WIDTH", "1024")
    assert RunConfig.from_dict({"model": {"width": 600}}).model.width == 600
    monkeypatch.setenv("NEUROREG_MAX_MODEL_WIDTH", "lots")
    with pytest.raises(ConfigError, match="NEUROREG_MAX_MODEL_WIDTH"):
        RunConfig.from_dict({"model": {"width": 600}})


def test_defaults_and_shipped_scale_pass_the_limits():
    RunConfig.from_dict({})
    RunConfig.from_dict({"model": {"width": 64}, "regularizer": {"n": 50000, "target": "pixel_th", "alpha": 1},
                         "data": {"image_size": 224}, "evaluation": {"boundary_steps": 5000, "n_images": 10000}})


# --- archives and images ------------------------------------------------------------------------------


def _tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_extraction_caps_leave_no_temp_folder(tmp_path, monkeypatch):
    from neuroreg.imagefolder import extract_archive

    cache = tmp_path / "cache"
    monkeypatch.setenv("NEUROREG_CACHE", str(cache))
    bomb = _tar(tmp_path / "bomb.tar.gz", {"train/a/0.png": b"\0" * (8 << 20)})
    with pytest.raises(ConfigError, match="times its own size"):
        extract_archive(bomb)
    assert list(cache.iterdir()) == []
    monkeypatch.setenv("NEUROREG_MAX_EXTRACT_BYTES", "1000")
    with pytest.raises(ConfigError, match="NEUROREG_MAX_EXTRACT_BYTES"):
        extract_archive(_tar(tmp_path / "big.tar", {"a": os.urandom(2000)}, "w"))
    monkeypatch.delenv("NEUROREG_MAX_EXTRACT_BYTES")
    xz = _tar(tmp_path / "x.tar.gz", {"train/a/0.png": b"x"}, "w:xz")
    with pytest.raises(ConfigError, match="cannot extract"):
        extract_archive(xz)
    good = extract_archive(_tar(tmp_path / "ok.tgz", {"train/a/0.png": b"x", "train/b/1.png": b"y"}))
    assert (good / "train" / "b" / "1.png").read_bytes() == b"y"
    assert [p for p in cache.iterdir() if ".tmp-" in p.name] == []


def test_decoding_names_the_image_and_bounds_pixels(tmp_path, monkeypatch):
    from PIL import Image

    from neuroreg.imagefolder import _decode

    Image.new("RGB", (40, 30)).save(tmp_path / "ok.png")
    assert _decode(str(tmp_path / "ok.png")).shape == (30, 40, 3)
    monkeypatch.setenv("NEUROREG_MAX_PIXELS", "1000")
    with pytest.raises(ConfigError, match=r"ok\.png is 40 x 30 pixels.*NEUROREG_MAX_PIXELS"):
        _decode(str(tmp_path / "ok.png"))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    with pytest.raises(ConfigError, match=r"bad\.jpg cannot be decoded"):
        _decode(str(tmp_path / "bad.jpg"))


# --- checkpoints and evaluation ------------------------------------------------------------------------


def _checkpoint(tmp_path: Path, over: dict | None = None, nan: bool = False) -> Path:
    cfg = RunConfig.from_dict({"model": {"width": 2}})
    model = build_model(cfg, 10, 1)
    g = torch.Generator()
    state = trainer_state(cfg, model, torch.optim.SGD(model.parameters(), lr=0.1), None, g, g, 10, 1, 1, 0.1, 0.5,
                          0.0, [])
    state["config"] = config_with(cfg.to_dict(), over or {})
    if nan:
        state["model"]["conv1.weight"].view(-1)[0] = float("inf")
    torch.save(state, tmp_path / "c.pt")
    return tmp_path / "c.pt"


def test_stored_width_is_compared_before_any_allocation(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROREG_MAX_MODEL_WIDTH", "100000")  # past the limit: only the shape check stands
    path = _checkpoint(tmp_path, {"model.width": 3000})
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="conv1.weight has shape"):
        load_model(path)
    assert time.perf_counter() - t0 < 5


def test_non_finite_weights_and_bad_stored_configs_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="conv1.weight holds NaN or infinite"):
        load_model(_checkpoint(tmp_path, nan=True))
    with pytest.raises(CheckpointError, match="optim.lr"):
        load_model(_checkpoint(tmp_path, {"optim.lr": float("inf")}))
    model, cfg = load_model(_checkpoint(tmp_path, {"data.name": "mnist", "data.root": "/nowhere"}))
    assert cfg.model.width == 2 and not model.training  # a stored location is not looked at


def test_evaluation_resets_every_place_a_checkpoint_names():
    from neuroreg.evaluate.__main__ import _trusted_config

    stored = RunConfig.from_dict({"data": {"name": "digits", "image_size": 12}}).to_dict()
    stored["data"].update(root="/usr", download=True, test_dir=".", train_dir="..")
    stored["evaluation"]["surrogate"] = "/elsewhere/s.pt"
    d = _trusted_config(stored)
    assert (d["data"]["root"], d["data"]["download"], d["data"]["test_dir"], d["data"]["train_dir"]) == (
        None, False, "test", "train")
    assert d["data"]["image_size"] == 12 and d["evaluation"]["surrogate"] is None


# --- results folders and SQL ---------------------------------------------------------------------------


def test_a_fifo_in_a_trial_folder_is_one_problem(tmp_path):
    from analysis.ray_folder import read_trial

    trial = tmp_path / "trial_1"
    (trial / "evaluation").mkdir(parents=True)
    (trial / "params.json").write_text(json.dumps({"params": {}}))
    os.mkfifo(trial / "result.json")
    os.mkfifo(trial / "evaluation" / "noise.jsonl")
    (trial / "evaluation" / "summary.json").write_text("[" * 100000 + "]" * 100000)
    problems: list = []
    t = _no_hang(lambda: read_trial(trial, None, problems))
    assert t is not None and t.results == [] and t.records["noise"] == [] and t.summary == {}
    text = " ".join(map(str, problems))
    assert "result.json" in text and "noise.jsonl" in text and "summary.json" in text


@pytest.fixture
def results(tmp_path):
    import pandas as pd

    from analysis.store import sweep_file, to_arrow, write_atomic

    df = pd.DataFrame({"sweep": ["s"] * 10, "trial_id": [f"t{i}" for i in range(10)], "status": ["done"] * 10})
    path = sweep_file(tmp_path / "results", "trials", "s")
    path.parent.mkdir(parents=True)
    write_atomic(to_arrow(df, "trials", "s"), path)
    return tmp_path / "results"


def test_sql_row_cap_and_streaming(results, tmp_path, capsys):
    from analysis.sql import TooManyRows, main, run

    with pytest.raises(TooManyRows, match="--max-rows"):
        run("SELECT * FROM trials, range(100)", results, max_rows=999)
    assert len(run("SELECT * FROM trials, range(100)", results, max_rows=1000)) == 1000
    assert main(["--results", str(results), "--max-rows", "50", "SELECT * FROM trials, range(100)"]) == 2
    assert "--max-rows" in capsys.readouterr().err
    for out in ("o.parquet", "o.csv"):
        rc = main(["--results", str(results), "--max-rows", "50", "--out", str(tmp_path / out),
                   "SELECT * FROM trials, range(100)"])
        assert rc == 0 and "1000 rows, streamed" in capsys.readouterr().out
    import pandas as pd

    assert len(pd.read_parquet(tmp_path / "o.parquet")) == 1000 and len(pd.read_csv(tmp_path / "o.csv")) == 1000
    assert main(["--results", str(results), "--max-rows", "0", "SELECT 1"]) == 2


def test_a_fifo_table_is_refused_by_name(results):
    from analysis.query import load

    os.mkfifo(results / "tables" / "trials" / "x.parquet")
    with pytest.raises(ValueError, match=r"x\.parquet is not a regular file"):
        _no_hang(lambda: load("trials", results))


def test_where_nesting_is_bounded():
    import pandas as pd

    from analysis.filters import MAX_DEPTH, FilterError, parse_filter
    from analysis.query import resolve

    df = pd.DataFrame({"a": [1, 2]})
    ok = "(" * MAX_DEPTH + "a > 1" + ")" * MAX_DEPTH
    assert parse_filter(ok, df, resolve).tolist() == [False, True]
    with pytest.raises(FilterError, match="nest"):
        parse_filter("(" + ok + ")", df, resolve)
    assert parse_filter("not not a > 1", df, resolve).tolist() == [False, True]
