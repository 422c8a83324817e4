"""The Optuna study in a database: created in the sweep folder, extended by --resume --num-samples."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.test_sweep_run import (  # noqa: F401 -- ray_cluster: the shared Ray fixture
    TINY_BASE,
    ray_cluster,
    run_main,
    trial_dirs,
    write_space,
)

pytestmark = pytest.mark.slow

BASE = {**TINY_BASE, "train": {**TINY_BASE["train"], "epochs": 1}}


def _optuna_space(path: Path) -> Path:
    return write_space(path, base=BASE, space={"regularizer.alpha": {"loguniform": [0.1, 10]}},
                       search={"algorithm": "optuna", "seed": 0}, num_samples=2)


def _study(url: str, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=url)


@pytest.mark.usefixtures("ray_cluster")
def test_study_persists_and_resume_extends_it(tmp_path, capsys):
    space = _optuna_space(tmp_path / "o.yaml")
    res = tmp_path / "res"
    assert run_main("--space", str(space), "--storage", str(res), "--name", "st") == 0
    url = f"sqlite:///{res / 'st' / 'study.db'}"
    first = _study(url, "st").trials
    assert [t.state.name for t in first] == ["COMPLETE", "COMPLETE"]  # the baseline is not in the study
    assert f"optuna-dashboard {url}" in capsys.readouterr().out

    assert run_main("--resume", "--name", "st", "--storage", str(res), "--num-samples", "4") == 0
    study = _study(url, "st")
    assert len(study.trials) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)
    # The first two configurations are kept, not drawn again.
    assert [t.params for t in study.trials[:2]] == [t.params for t in first]
    assert len(trial_dirs(res / "st")) == 4 + 1
    assert yaml.safe_load((res / "st" / "sweep.yaml").read_text())["num_samples"] == 4


@pytest.mark.usefixtures("ray_cluster")
def test_study_storage_url(tmp_path):
    space = _optuna_space(tmp_path / "o.yaml")
    db = tmp_path / "elsewhere" / "my.db"
    assert run_main("--space", str(space), "--storage", str(tmp_path / "res"), "--name", "u",
                    "--study-storage", f"sqlite:///{db}", "--num-samples", "1") == 0
    assert len(_study(f"sqlite:///{db}", "u").trials) == 1
    assert not (tmp_path / "res" / "u" / "study.db").exists()


def test_flags_resume_cannot_honour(tmp_path, capsys):
    """Refused with exit 2 before Ray starts, the flag named."""
    res = tmp_path / "res"
    (res / "o").mkdir(parents=True)
    opt = yaml.safe_load(_optuna_space(tmp_path / "o.yaml").read_text())
    (res / "o" / "sweep.yaml").write_text(yaml.safe_dump(opt))
    grid = write_space(tmp_path / "g.yaml", base=BASE, space={"regularizer.alpha": {"grid": [1.0, 2.0]}},
                       search={"algorithm": "grid"})
    (res / "g").mkdir()
    (res / "g" / "sweep.yaml").write_text(grid.read_text())
    cases = [
        (["--resume", "--name", "o", "--num-samples", "1"], "--num-samples", "already has 2"),
        (["--resume", "--name", "g", "--num-samples", "5"], "--num-samples", "only an Optuna study"),
        (["--resume", "--name", "o", "--max-concurrent", "2"], "--max-concurrent", "keeps the settings"),
        (["--resume", "--name", "o", "--study-storage", "sqlite:///x.db"], "--study-storage", "keeps the settings"),
        (["--space", str(grid), "--study-storage", "sqlite:///x.db"], "--study-storage", "only an Optuna sweep"),
        (["--space", str(tmp_path / "o.yaml"), "--study-storage", "nosuchdb://x"], "--study-storage",
         "no usable SQLAlchemy URL"),
    ]
    for argv, flag, why in cases:
        assert run_main(*argv, "--storage", str(res), "--dry-run") == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0] and why in err[0], (argv, err)
