"""fp16 training with a GradScaler (issue 25, item 4), tested on a CPU.

fp16 is for CUDA GPUs of compute capability 7.x, and the config refuses it on a CPU; the
trainer's fp16 path is still plain torch (CPU autocast knows float16, torch.amp.GradScaler
and fused SGD run on the CPU), so these tests force it with resolve_precision patched:
the autocast boundaries, no per-step sync from the scaler, and the scaler's state through
a checkpoint and an exact resume.
"""

from __future__ import annotations

import pytest
import torch

import neuroreg.precision as precision_mod
from neuroreg.checkpoint import restore_trainer_state, save_checkpoint, trainer_state
from neuroreg.config import ConfigError, RunConfig
from neuroreg.errors import CheckpointError
from neuroreg.precision import Precision, resolve_precision
from neuroreg.syncdetect import SyncDetector
from neuroreg.train import build_learner, joint_loss, prepare_data, train, train_epoch

CPU = torch.device("cpu")


def _cfg(**train_over) -> RunConfig:
    return RunConfig.from_dict({
        "data": {"name": "digits", "image_size": 16, "val_fraction": 0.15},
        "model": {"width": 8},
        "regularizer": {"target": "pixel_th", "alpha": 1.0, "th": 0.5, "n": 40, "layers": ["conv1", "conv5"],
                        "n_pairs": 8},
        "optim": {"lr": 0.05, "schedule": "constant"},
        "train": {"epochs": 2, "batch_size": 16, "seed": 0, "device": "cpu", "precision": "fp32",
                  "max_steps_per_epoch": 4, "check_finite_every": 2, **train_over},
    })


@pytest.fixture(scope="module")
def data():
    return prepare_data(_cfg())


@pytest.fixture
def fp16_on_cpu(monkeypatch):
    """Every run resolves to fp16, as auto would on a T4."""
    monkeypatch.setattr(precision_mod, "resolve_precision", lambda requested, device: "fp16")


# --- choosing fp16 ---------------------------------------------------------------------------


def test_fp16_refused_on_the_cpu_naming_the_field():
    with pytest.raises(ConfigError, match="train.precision") as e:
        _cfg(precision="fp16")
    assert e.value.field == "train.precision" and "CUDA" in str(e.value)
    _cfg(precision="fp16", device="auto")  # resolved at run time: may be a GPU
    with pytest.raises(ConfigError, match="train.precision"):
        resolve_precision("fp16", CPU)  # device auto that found no GPU


# --- the learner ---------------------------------------------------------------------------------


def test_fp16_learner_has_a_scaler_and_fused_sgd(fp16_on_cpu, data):
    lrn = build_learner(_cfg(), data, CPU)
    assert lrn.precision.name == "fp16" and isinstance(lrn.scaler, torch.amp.GradScaler)
    assert lrn.opt.defaults["fused"]  # skips non-finite steps on the device: no found_inf read-back


def test_fp32_and_bf16_keep_the_plain_optimizer(data):
    for name in ("fp32", "bf16"):
        lrn = build_learner(_cfg(precision=name), data, CPU)
        assert lrn.scaler is None and not lrn.opt.defaults["fused"]


def test_autocast_boundaries(fp16_on_cpu, data, monkeypatch):
    """Only the CNN runs in fp16: the similarity head, the soft arctanh loss and the task
    loss get fp32 tensors."""
    import neuroreg.joint_loss as train_mod  # where the step calls similarity_loss

    cfg = _cfg()
    lrn = build_learner(cfg, data, CPU)
    seen: dict[str, list[torch.dtype]] = {"features": [], "head": [], "sim_loss": []}
    features, head_forward, sim_loss = lrn.model.features, lrn.head.forward, train_mod.similarity_loss

    def spy_features(x, names):
        out = features(x, names)
        seen["features"] += [v.dtype for v in out.values()]
        return out

    def spy_head(feats, i, j, **kw):
        seen["head"] += [v.dtype for v in feats.values()]
        return head_forward(feats, i, j, **kw)

    def spy_loss(s_cnn, s_t, kind, eps):
        seen["sim_loss"] += [s_cnn.dtype, s_t.dtype]
        return sim_loss(s_cnn, s_t, kind, eps)

    monkeypatch.setattr(lrn.model, "features", spy_features)
    monkeypatch.setattr(lrn.head, "forward", spy_head)
    monkeypatch.setattr(train_mod, "similarity_loss", spy_loss)
    x = data.splits.train.images[:16].float() / 255
    y = data.splits.train.labels[:16]
    total, task, sim, logits, _ = joint_loss(lrn.model, lrn.head, lrn.target, cfg, x, y, data.reg.images,
                                             lrn.gen_pairs, lrn.precision)
    assert set(seen["features"]) == {torch.float16}  # autocast is on for the CNN
    assert logits.dtype == torch.float16
    assert set(seen["head"]) == {torch.float32} and set(seen["sim_loss"]) == {torch.float32}
    assert task.dtype == sim.dtype == total.dtype == torch.float32


def test_no_syncs_in_an_fp16_step(fp16_on_cpu, data):
    """GradScaler.step reads found_inf back every step unless the optimizer handles it on the
    device: with fused SGD the scaled step adds no sync."""
    cfg = _cfg()
    lrn = build_learner(cfg, data, CPU)
    x_train, y_train, x_reg = data.splits.train.images, data.splits.train.labels, data.reg.images
    det = SyncDetector().mark_device(lrn.model, lrn.head, lrn.target, lrn.opt, lrn.scaler, x_train, y_train, x_reg)
    with det:
        train_epoch(lrn, cfg, 0, x_train, y_train, x_reg)
    assert not det.outside("_check_finite", "_epoch_totals"), det.report(det.outside("_check_finite", "_epoch_totals"))
    assert lrn.scaler.get_scale() > 0 and lrn.scaler._growth_tracker is not None  # the scaler ran


# --- the scaler's state through a checkpoint -------------------------------------------------------


def _scaler_after_overflow() -> torch.amp.GradScaler:
    """A scaler whose state differs from a fresh one: one skipped step (scale halved), then growth counted."""
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=100)
    for value in (float("inf"), 1.0, 1.0):
        opt.zero_grad()
        scaler.scale((w * value).sum()).backward()
        scaler.step(opt)
        scaler.update()
    return scaler


def test_scaler_state_round_trip(tmp_path, data):
    cfg = _cfg()
    lrn = build_learner(cfg, data, CPU)
    scaler = _scaler_after_overflow()
    assert scaler.get_scale() == 512.0 and scaler._get_growth_tracker() == 2
    state = trainer_state(cfg, lrn.model, lrn.opt, lrn.head, lrn.gen_data, lrn.gen_pairs, 10, 1, 1, 0.05, 0.5, 0.0,
                          [], scaler)
    path = save_checkpoint(tmp_path / "c.pt", state)
    fresh = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=100)
    restore_trainer_state(path, CPU, lrn.model, lrn.opt, lrn.head, lrn.gen_data, lrn.gen_pairs, fresh)
    assert fresh.state_dict() == scaler.state_dict()
    assert fresh.get_scale() == 512.0
    # no scaler: the checkpoint has no such key; an fp16 run cannot resume from it
    plain = save_checkpoint(tmp_path / "p.pt", trainer_state(cfg, lrn.model, lrn.opt, lrn.head, lrn.gen_data,
                                                             lrn.gen_pairs, 10, 1, 1, 0.05, 0.5, 0.0, []))
    assert "scaler" not in torch.load(plain, weights_only=True)
    with pytest.raises(CheckpointError, match="no gradient scaler state"):
        restore_trainer_state(plain, CPU, lrn.model, lrn.opt, lrn.head, lrn.gen_data, lrn.gen_pairs, fresh)


def test_fp16_resume_is_exact(fp16_on_cpu, tmp_path, data):
    """Two epochs straight and one epoch + resume give the same weights and the same scale."""
    full = train(_cfg(epochs=2), tmp_path / "full", data=data)
    train(_cfg(epochs=1), tmp_path / "half", data=data)
    resumed = train(_cfg(epochs=2), tmp_path / "half", data=data, resume_from=tmp_path / "half" / "checkpoint_last.pt")
    a = torch.load(tmp_path / "full" / "checkpoint_last.pt", weights_only=True)
    b = torch.load(tmp_path / "half" / "checkpoint_last.pt", weights_only=True)
    assert a["scaler"] == b["scaler"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert full.history[-1]["precision"] == resumed.history[-1]["precision"] == "fp16"


def test_a_skipped_first_fp16_step_leaves_the_momentum_at_zero():
    """torch's fused SGD marks its momentum buffers initialised even when the first step is
    skipped (found_inf); Precision.sgd starts them at zero, so the first real step is exactly
    plain SGD's first step (buffer = gradient)."""
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    ref = torch.nn.Parameter(w.detach().clone())
    opt = Precision("fp16", "cpu").sgd([w], lr=0.1, momentum=0.9, weight_decay=5e-4)
    plain = torch.optim.SGD([ref], lr=0.1, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    opt.zero_grad()
    scaler.scale((w * float("inf")).sum()).backward()
    scaler.step(opt)  # skipped: non-finite gradients
    scaler.update()
    assert torch.equal(w.detach(), ref.detach())
    assert torch.equal(opt.state[w]["momentum_buffer"], torch.zeros(3))
    for _ in range(2):
        opt.zero_grad()
        plain.zero_grad()
        scaler.scale((w**2).sum()).backward()
        (ref**2).sum().backward()
        scaler.step(opt)
        scaler.update()
        plain.step()
    torch.testing.assert_close(w.detach(), ref.detach(), rtol=1e-6, atol=1e-7)
