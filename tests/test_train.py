"""The joint trainer: learning, the regularizer's effect, exact resume, errors, real MNIST."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from neuroreg.checkpoint import load_checkpoint, load_model
from neuroreg.config import ConfigError, RunConfig
from neuroreg.similarity import SimilarityHead
from neuroreg.targets import build_target
from neuroreg.train import (
    TrainingDiverged,
    fixed_pair_similarity_loss,
    learning_rate,
    main,
    prepare_data,
    sample_pairs,
    train,
)


def tiny(**over) -> RunConfig:
    d = {
        "data": {"name": "digits", "image_size": 16, "val_fraction": 0.15, "grayscale": True},
        "model": {"width": 8},
        "regularizer": {"target": "none", "alpha": 0.0, "n": 400, "layers": ["conv1", "conv5", "conv9"]},
        "optim": {"lr": 0.05, "schedule": "constant"},
        "train": {"epochs": 3, "batch_size": 32, "seed": 0, "device": "cpu"},
    }
    for k, v in over.items():
        sec, key = k.split("__")
        d.setdefault(sec, {})[key] = v
    return RunConfig.from_dict(d)


@pytest.fixture(scope="module")
def digits_data():
    return prepare_data(tiny(regularizer__target="pixel_th", regularizer__alpha=1.0))


@pytest.mark.slow
def test_digits_learns_with_and_without_regularizer(tmp_path, digits_data):
    base = train(tiny(), tmp_path / "base", data=digits_data)
    reg_cfg = tiny(regularizer__target="pixel_th", regularizer__alpha=1.0, regularizer__th=0.8)
    reg = train(reg_cfg, tmp_path / "reg", data=digits_data)
    # 10 classes: chance is 0.1
    assert base.best_val_acc > 0.6, base.history
    assert reg.best_val_acc > 0.6, reg.history
    # the regularizer does its job: the fixed-pair similarity loss falls
    last = reg.history[-1]["val_sim_loss"]
    assert last < 0.7 * reg.initial_val_sim_loss, (reg.initial_val_sim_loss, [h["val_sim_loss"] for h in reg.history])
    # ... and ends below that of the unregularized model on the same pairs
    target = build_target(reg_cfg.regularizer, digits_data.reg.images)
    head = SimilarityHead(reg_cfg.regularizer.layers, [8, 8, 16])
    base_sim = fixed_pair_similarity_loss(base.model, head, target, digits_data.reg.images, reg_cfg)
    assert last < 0.9 * base_sim, (last, base_sim)
    # the baseline computes no pair batch at all
    assert all(h["pairs_per_s"] == 0 and h["sim_loss"] == 0 for h in base.history)
    assert all(h["pairs_per_s"] > 0 for h in reg.history)
    ws = [reg.history[-1][f"layer_weight_{n}"] for n in ["conv1", "conv5", "conv9"]]
    assert math.isclose(sum(ws), 1.0, rel_tol=1e-6)
    # files: metrics lines, checkpoints readable with weights_only
    lines = (tmp_path / "reg" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    st = load_checkpoint(tmp_path / "reg" / "checkpoint_best.pt")
    assert st["best_val_acc"] == pytest.approx(reg.best_val_acc)
    model, cfg = load_model(tmp_path / "reg" / "checkpoint_best.pt")
    assert cfg.regularizer.target == "pixel_th"
    x = digits_data.splits.val.images[:8].float() / 255
    assert torch.allclose(model(x), reg.model(x), atol=1e-5)


@pytest.mark.slow
def test_resume_gives_the_same_weights(tmp_path, digits_data):
    cfg = tiny(regularizer__target="pixel_th", regularizer__alpha=1.0, train__epochs=3, train__max_steps_per_epoch=8)
    full = train(cfg, tmp_path / "full", data=digits_data)

    class Stop(Exception):
        pass

    def stop_after_two(m):
        if m["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, tmp_path / "part", data=digits_data, callback=stop_after_two)
    resumed = train(cfg, tmp_path / "part", data=digits_data, resume_from=tmp_path / "part" / "checkpoint_last.pt")
    a = load_checkpoint(tmp_path / "full" / "checkpoint_last.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoint_last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["similarity"]["layer_logits"], b["similarity"]["layer_logits"])
    assert [h["train_loss"] for h in full.history] == [h["train_loss"] for h in resumed.history]
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]


def test_same_seed_same_run_other_seed_differs(tmp_path, digits_data):
    cfg = tiny(regularizer__target="pixel_th", regularizer__alpha=1.0, train__epochs=1, train__max_steps_per_epoch=4)
    a = train(cfg, tmp_path / "a", data=digits_data)
    b = train(cfg, tmp_path / "b", data=digits_data)
    c = train(tiny(regularizer__target="pixel_th", regularizer__alpha=1.0, train__epochs=1,
                   train__max_steps_per_epoch=4, train__seed=1), tmp_path / "c", data=digits_data)
    pa, pb, pc = (next(r.model.parameters()) for r in (a, b, c))
    assert torch.equal(pa, pb)
    assert not torch.equal(pa, pc)


def test_nan_loss_stops_with_epoch_and_step(tmp_path, digits_data):
    cfg = tiny(optim__lr=1e12, train__epochs=2, optim__momentum=0.0)
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step \d+"):
        train(cfg, tmp_path / "nan", data=digits_data)


def test_pairing_modes():
    cfg = tiny(regularizer__target="pixel", regularizer__alpha=1.0, regularizer__n_pairs=16)
    g = torch.Generator().manual_seed(0)
    idx, i, j = sample_pairs(cfg, 100, g)
    assert len(idx) == 32 and len(i) == 16
    assert bool((idx[i] != idx[j]).all())
    cfg = tiny(regularizer__target="pixel", regularizer__alpha=1.0, regularizer__pairing="batch", regularizer__batch_k=10)
    idx, i, j = sample_pairs(cfg, 100, g)
    assert len(idx) == 10 and len(set(idx.tolist())) == 10 and len(i) == 45


def test_step_cycle_schedule():
    cfg = RunConfig()
    lrs = [learning_rate(cfg, e) for e in range(25)]
    assert lrs[0] == lrs[3] == 0.1
    assert lrs[4] == pytest.approx(0.03)
    assert lrs[19] == pytest.approx(0.1 * 0.3**4)
    assert lrs[20] == 0.1  # resets after epoch 20


@pytest.mark.parametrize(
    "over, field",
    [
        ({"regularizer": {"alpha": -1}}, "regularizer.alpha"),
        ({"regularizer": {"th": 1.0}}, "regularizer.th"),
        ({"regularizer": {"th": 0}}, "regularizer.th"),
        ({"regularizer": {"bogus": 1}}, "regularizer.bogus"),
        ({"optim": {"lr": "fast"}}, "optim.lr"),
        ({"data": {"name": "mnist", "root": None}}, "data.root"),
        ({"data": {"name": "mnist", "root": "/nonexistent/x"}}, "data.root"),
        ({"regularizer": {"layers": ["conv99"]}}, "regularizer.layers"),
        ({"model": {"name": "vgg"}}, "model.name"),
        ({"regularizer": {"target": "neural", "alpha": 1}}, "regularizer.neural_responses"),
    ],
)
def test_bad_config_names_the_field(over, field, monkeypatch):
    monkeypatch.delenv("NEUROREG_DATA_ROOT", raising=False)
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict(over)
    assert e.value.field == field
    assert field in str(e.value)


def test_non_symmetric_target_fails_before_training(tmp_path):
    m = np.eye(400)
    m[0, 1] = 0.3
    np.save(tmp_path / "m.npy", m)
    cfg = tiny(regularizer__target="neural", regularizer__alpha=1.0, regularizer__neural_matrix=str(tmp_path / "m.npy"))
    with pytest.raises(ConfigError, match="regularizer.neural_matrix.*not symmetric"):
        train(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "checkpoint_last.pt").exists()


def test_cli_reports_config_errors_and_refuses_to_overwrite(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "x"), "--set", "regularizer.alpha=-2"]) == 2
    assert "regularizer.alpha" in capsys.readouterr().err
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "checkpoint_last.pt").write_bytes(b"")
    assert main(["--out", str(tmp_path / "y")]) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.slow
def test_real_mnist_through_torchvision(tmp_path, shared_data_root):
    cfg = RunConfig.from_dict(
        {
            "data": {"name": "mnist", "root": str(shared_data_root), "image_size": 16, "subset": 3000, "test_subset": 500, "val_fraction": 0.1},
            "model": {"width": 8},
            "regularizer": {"target": "pixel_th", "alpha": 1.0, "th": 0.8, "n": 500},
            "optim": {"lr": 0.05, "schedule": "constant"},
            "train": {"epochs": 3, "batch_size": 32, "device": "cpu"},
        }
    )
    res = train(cfg, tmp_path / "mnist")
    assert res.best_val_acc > 0.8, res.history
    assert len(res.test) == 500


def test_data_root_expands_environment_variables(monkeypatch, tmp_path):
    from neuroreg.config import DataConfig, data_root

    monkeypatch.setenv("MY_DATA", str(tmp_path))
    assert data_root(DataConfig(name="mnist", root="$MY_DATA/x.tar.gz")) == f"{tmp_path}/x.tar.gz"
    monkeypatch.delenv("MY_DATA")
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict({"data": {"name": "imagefolder", "root": "$MY_DATA/x.tar.gz"}})
    assert e.value.field == "data.root" and "not set" in str(e.value)


# --- issue 25: which loss went non-finite, no folder for a refused run, the target's device --------


def test_nan_hint_names_the_task_loss_and_the_knobs(tmp_path, digits_data):
    """No regularizer: only the task loss can go non-finite, and the message says so."""
    cfg = tiny(optim__lr=1e12, train__epochs=2, optim__momentum=0.0)
    with pytest.raises(TrainingDiverged, match=r"^the task loss \(cross-entropy\) became NaN or infinite at epoch 1, "
                                               r"step \d+; lower optim.lr or regularizer.alpha, or raise regularizer.eps"):
        train(cfg, tmp_path / "nan", data=digits_data)


@pytest.mark.parametrize(("task", "sim", "total", "which"), [
    (1.0, math.inf, math.inf, "the similarity loss"),
    (math.nan, 1.0, math.nan, "the task loss"),
    (math.inf, math.nan, math.nan, "both the task and the similarity loss"),
    (1e38, 1e38, math.inf, "the total loss"),  # each finite, the weighted sum overflows (fp32)
])
def test_first_non_finite_step_records_which_loss(task, sim, total, which):
    """_note_bad keeps the first bad step and which loss it was, on the device; _check_finite
    decodes both from one read-back."""
    from neuroreg.train import _check_finite, _note_bad

    t = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    bad = torch.full((), -1, dtype=torch.int64)
    bad = _note_bad(bad, 0, t(1.0), t(1.0), t(0.0))  # step 1 finite
    bad = _note_bad(bad, 1, t(total), t(task), t(sim))  # step 2 not
    bad = _note_bad(bad, 2, t(math.nan), t(math.nan), t(1.0))  # a later one does not overwrite it
    with pytest.raises(TrainingDiverged, match=rf"^{which}.* at epoch 4, step 2;"):
        _check_finite(bad, None, 3)
    _check_finite(torch.full((), -1, dtype=torch.int64), torch.tensor(False), 0)  # all fine: no error
    with pytest.raises(RuntimeError, match="cycle-walking bound"):
        _check_finite(torch.full((), -1, dtype=torch.int64), torch.tensor(True), 0)


def test_a_refused_target_leaves_no_output_folder(tmp_path, digits_data):
    """Weights that do not fit the features network are found when the target is built; the
    run's folder must not exist then (a sweep would otherwise keep an empty run/)."""
    weights = tmp_path / "wrong.pt"
    torch.save({"not_a_layer.weight": torch.zeros(3)}, weights)
    cfg = tiny(regularizer__target="features", regularizer__alpha=1.0, regularizer__features_weights=str(weights),
               regularizer__features_arch="squeezenet1_1", regularizer__features_layer="features.3")
    with pytest.raises(ConfigError, match="regularizer.features_weights"):
        train(cfg, tmp_path / "run", data=digits_data)
    assert not (tmp_path / "run").exists()


def test_build_learner_builds_the_target_on_the_trainer_device(monkeypatch, digits_data):
    """The features target's frozen network must run where the trainer does, not on the CPU."""
    import neuroreg.train as train_mod

    seen = []
    real = train_mod.build_target

    def spy(reg, images, *args, **kwargs):
        seen.append(torch.device(*args, *kwargs.values()) if args or kwargs else None)  # None: not passed
        return real(reg, images, *args, **kwargs)

    monkeypatch.setattr(train_mod, "build_target", spy)
    train_mod.build_learner(tiny(regularizer__target="pixel_th", regularizer__alpha=1.0), digits_data,
                            torch.device("cpu"))
    assert seen == [torch.device("cpu")]
