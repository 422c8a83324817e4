"""train.precision / channels_last / compile: resolution, fp32 islands, records, CUDA path."""

from __future__ import annotations

import warnings

import pytest
import torch

from neuroreg.config import ConfigError, RunConfig
from neuroreg.models import create_model
from neuroreg.precision import (
    FP32,
    Precision,
    channels_last_safe,
    device_has_fast_bf16,
    resolve_precision,
)
from neuroreg.similarity import SimilarityHead
from neuroreg.targets import build_target
from neuroreg.train import joint_loss, prepare_data, train

CPU = torch.device("cpu")
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA branch: no CUDA device on this machine")


def tiny(device: str = "cpu", **train_over) -> RunConfig:
    return RunConfig.from_dict({
        "data": {"name": "digits", "image_size": 16, "val_fraction": 0.15},
        "model": {"width": 8},
        "regularizer": {"target": "pixel_th", "alpha": 1.0, "th": 0.5, "n": 300, "layers": ["conv1", "conv5", "conv9"]},
        "optim": {"lr": 0.05, "schedule": "constant"},
        "train": {"epochs": 1, "batch_size": 32, "seed": 0, "device": device, "max_steps_per_epoch": 3, **train_over},
    })


@pytest.fixture(scope="module")
def data():
    return prepare_data(tiny())


def test_resolution():
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"  # explicit bf16 is honoured even where slow
    assert resolve_precision("auto", CPU) == ("bf16" if device_has_fast_bf16(CPU) else "fp32")
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", CPU)
    with pytest.raises(ConfigError, match="train.precision"):  # fp16 needs CUDA
        resolve_precision("fp16", CPU)


@pytest.mark.parametrize(("capability", "bf16", "expected"), [
    ((7, 5), False, "fp16"),  # T4: fp16 tensor cores, no bf16
    ((7, 0), False, "fp16"),  # V100
    ((8, 0), True, "bf16"),  # A100
    ((9, 0), True, "bf16"),  # H100
    ((6, 1), False, "fp32"),  # P40: neither is fast
])
@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled, but CUDA is not available")
def test_auto_on_cuda_by_compute_capability(monkeypatch, capability, bf16, expected):
    """auto picks fp16 on compute capability 7.x (torch.cuda faked: no GPU here)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    cuda = torch.device("cuda")
    assert resolve_precision("auto", cuda) == expected
    assert resolve_precision("fp16", cuda) == "fp16" and resolve_precision("fp32", cuda) == "fp32"
    p = Precision(expected, "cuda")
    assert (p.grad_scaler() is not None) == (expected == "fp16")


def test_config_refuses_unknown_precision():
    with pytest.raises(ConfigError, match="train.precision"):
        tiny(precision="fp8")
    with pytest.raises(ConfigError, match="train.precision.*CUDA"):
        tiny(precision="fp16")  # device cpu
    with pytest.raises(ConfigError, match="train.check_finite_every"):
        tiny(check_finite_every=0)


def test_channels_last_refused_where_torch_corrupts_the_heap():
    # width 4: 1x1 stride-2 shortcuts with 4 input channels (torch 2.14.1 CPU bug)
    assert not channels_last_safe(create_model("resnet18", 10, 1, width=4), CPU)
    assert channels_last_safe(create_model("resnet18", 10, 1, width=8), CPU)
    p = Precision.for_run("fp32", CPU, True, create_model("resnet18", 10, 1, width=4))
    assert not p.channels_last


def _joint(precision: Precision):
    cfg = tiny()
    torch.manual_seed(0)
    model = precision.prepare_model(create_model("resnet18", 10, 1, width=8))
    x_reg = torch.randint(0, 256, (50, 1, 16, 16), dtype=torch.uint8)
    layers = cfg.regularizer.layers
    with torch.no_grad():
        chans = [f.shape[1] for f in model.features(torch.zeros(2, 1, 16, 16), layers).values()]
    head = SimilarityHead(layers, chans)
    target = build_target(cfg.regularizer, x_reg)
    x = precision.layout(torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(1)))
    y = torch.arange(8) % 10
    g = torch.Generator().manual_seed(2)
    return model, head, joint_loss(model, head, target, cfg, x, y, x_reg, g, precision)


def test_bf16_keeps_similarity_and_losses_in_fp32():
    model, head, (loss, task, sim, logits, n) = _joint(Precision("bf16", "cpu", True))
    assert logits.dtype == torch.bfloat16  # the CNN did run in bf16
    assert loss.dtype == task.dtype == sim.dtype == torch.float32
    assert n == 16
    loss.backward()
    # parameters and their gradients stay fp32, so SGD's momentum buffers are fp32
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    assert head.layer_logits.grad.dtype == torch.float32
    assert all(getattr(head, f"mu_{n}").dtype == torch.float32 for n in head.layers)


def test_bf16_loss_close_to_fp32():
    *_, (l32, _, s32, _, _) = _joint(FP32)
    *_, (l16, _, s16, _, _) = _joint(Precision("bf16", "cpu", True))
    assert torch.isfinite(s16)
    assert abs(float(s16.detach()) - float(s32.detach())) < 0.05 * max(1.0, abs(float(s32)))


def test_channels_last_same_run_up_to_rounding(tmp_path, data):
    # One small step: training is chaotic, so several steps amplify summation-order rounding.
    cfgs = [tiny(precision="fp32", channels_last=cl, max_steps_per_epoch=1) for cl in (False, True)]
    for c in cfgs:
        c.optim.lr = 1e-3
    a = train(cfgs[0], tmp_path / "a", data=data)
    b = train(cfgs[1], tmp_path / "b", data=data)
    assert a.history[-1]["train_loss"] == pytest.approx(b.history[-1]["train_loss"], rel=1e-5)
    assert a.history[-1]["channels_last"] is False and b.history[-1]["channels_last"] is True
    assert a.history[-1]["precision"] == b.history[-1]["precision"] == "fp32"
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-3, atol=1e-4)
    # evaluation gets a contiguous fp32 model whatever the training layout
    assert all(p.is_contiguous() and p.dtype == torch.float32 for p in b.model.parameters())


def test_bf16_run_is_recorded(tmp_path, data):
    r = train(tiny(precision="bf16"), tmp_path / "bf16", data=data)
    h = r.history[-1]
    assert h["precision"] == "bf16"
    assert h["sim_loss"] == h["sim_loss"] and h["train_loss"] == h["train_loss"]  # finite numbers
    import json

    rec = json.loads((tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["precision"] == "bf16"


def test_divergence_found_at_its_step_between_checks(tmp_path, data):
    from neuroreg.train import TrainingDiverged

    cfg = tiny(precision="fp32", check_finite_every=1000, max_steps_per_epoch=6)
    cfg.optim.lr, cfg.optim.momentum = 1e12, 0.0
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step [1-6]\b"):
        train(cfg, tmp_path / "nan", data=data)


@pytest.mark.slow
def test_compile_trains(tmp_path, data):
    import shutil

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    r = train(tiny(precision="fp32", compile=True), tmp_path / "c", data=data)
    ref = train(tiny(precision="fp32"), tmp_path / "e", data=data)
    assert r.history[-1]["train_loss"] == pytest.approx(ref.history[-1]["train_loss"], rel=1e-3)


# --- CUDA branches (run wherever CUDA is present) ----------------------------------------


@cuda_only
def test_cuda_auto_is_bf16_where_supported(tmp_path, data):
    r = train(tiny(device="cuda", precision="auto"), tmp_path / "g", data=data)
    expected = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    assert r.history[-1]["precision"] == expected
    assert r.history[-1]["channels_last"] is True
    assert next(r.model.parameters()).device.type == "cuda"


@cuda_only
def test_cuda_host_syncs_do_not_grow_with_steps(tmp_path, data):
    """No per-step host synchronisation: syncs per epoch are the same for 4 and 12 steps."""

    def syncs(steps: int) -> int:
        cfg = tiny(device="cuda", precision="auto", max_steps_per_epoch=steps, check_finite_every=1000)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                train(cfg, tmp_path / f"s{steps}", data=data)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(x.message) for x in w)

    assert syncs(12) == syncs(4)


@cuda_only
def test_cuda_augmentation_on_device():
    from neuroreg.data import augment_batch

    x = torch.rand(8, 1, 16, 16, device="cuda")
    out = augment_batch(x, 2, True, torch.Generator().manual_seed(0))
    ref = augment_batch(x.cpu(), 2, True, torch.Generator().manual_seed(0))
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), ref)


# --- fp32 means IEEE fp32 (no TF32) -------------------------------------------------------


def _legacy() -> tuple:
    """The legacy flags as torch.compile reads them."""
    return (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
            torch.get_float32_matmul_precision())


@pytest.fixture
def fp32_state():
    """Leaves torch's fp32 settings as this test found them."""
    from neuroreg.precision import _apply, fp32_settings

    saved = fp32_settings()
    yield saved
    _apply(saved)


def test_ieee_fp32_turns_tf32_off_and_restores(fp32_state):
    from neuroreg.precision import fp32_modes, fp32_settings, ieee_fp32

    # torch's default: cuDNN convolutions in TF32 (what "fp32" silently meant before)
    assert fp32_modes("cuda") == {"fp32_conv": "tf32", "fp32_matmul": "ieee"}
    torch.backends.cuda.matmul.allow_tf32 = True  # a user who asked for TF32 matmuls too
    before, legacy = fp32_settings(), _legacy()
    assert legacy == (True, True, "high")
    with ieee_fp32():
        assert fp32_modes("cuda") == {"fp32_conv": "ieee", "fp32_matmul": "ieee"}
        assert fp32_modes("cpu") == {"fp32_conv": "ieee", "fp32_matmul": "ieee"}
        assert _legacy() == (False, False, "highest")
    assert fp32_settings() == before and _legacy() == legacy


def test_ieee_fp32_restores_after_an_exception(fp32_state):
    from neuroreg.precision import fp32_modes, fp32_settings, ieee_fp32

    torch.set_float32_matmul_precision("medium")  # oneDNN bf16 matmuls on the CPU, TF32 on CUDA
    before = fp32_settings()
    assert fp32_modes("cpu")["fp32_matmul"] == "bf16"
    with pytest.raises(RuntimeError, match="boom"), ieee_fp32():
        assert fp32_modes("cpu") == fp32_modes("cuda") == {"fp32_conv": "ieee", "fp32_matmul": "ieee"}
        raise RuntimeError("boom")
    assert fp32_settings() == before


def test_ieee_fp32_overrides_the_new_api_and_nests(fp32_state):
    from neuroreg.precision import fast_fp32, fp32_modes, fp32_settings, ieee_fp32

    torch.backends.fp32_precision = "tf32"  # the generic switch of torch >= 2.9: TF32 everywhere
    before = fp32_settings()
    with ieee_fp32():
        assert fp32_modes("cuda") == fp32_modes("cpu") == {"fp32_conv": "ieee", "fp32_matmul": "ieee"}
        with fast_fp32():
            assert fp32_modes("cuda") == {"fp32_conv": "tf32", "fp32_matmul": "ieee"}
            assert fp32_modes("cpu") == {"fp32_conv": "ieee", "fp32_matmul": "ieee"}
        assert fp32_modes("cuda") == {"fp32_conv": "ieee", "fp32_matmul": "ieee"}
    assert fp32_settings() == before


def test_training_and_validation_modes_are_recorded(tmp_path, data, monkeypatch, fp32_state):
    """fp32 training in IEEE, bf16 training in the fast modes, validation always IEEE;
    the epoch record names the training modes. (Checked through the CUDA flags, which the
    contexts set on any machine.)"""
    import neuroreg.train as tr
    from neuroreg.precision import fp32_modes

    seen: list[tuple[str, dict]] = []
    real_epoch, real_acc = tr.train_epoch, tr.accuracy
    monkeypatch.setattr(tr, "train_epoch", lambda *a, **k: (seen.append(("train", fp32_modes("cuda"))),
                                                             real_epoch(*a, **k))[1])
    monkeypatch.setattr(tr, "accuracy", lambda *a, **k: (seen.append(("val", fp32_modes("cuda"))), real_acc(*a, **k))[1])
    torch.backends.cuda.matmul.allow_tf32 = True  # whatever the process had set
    before = fp32_modes("cuda")
    ieee, fast = {"fp32_conv": "ieee", "fp32_matmul": "ieee"}, {"fp32_conv": "tf32", "fp32_matmul": "ieee"}
    r = train(tiny(precision="fp32"), tmp_path / "a", data=data)
    assert seen == [("train", ieee), ("val", ieee)]
    assert r.history[-1]["fp32_conv"] == "ieee" and r.history[-1]["fp32_matmul"] == "ieee"  # CPU: oneDNN
    seen.clear()
    train(tiny(precision="bf16"), tmp_path / "b", data=data)
    assert seen == [("train", fast), ("val", ieee)]
    assert fp32_modes("cuda") == before


def test_evaluation_runs_in_ieee_fp32(tmp_path, data, monkeypatch, fp32_state):
    """Every suite, attacks and verification included, sees IEEE fp32, and the settings
    come back afterwards, also when a suite fails."""
    from types import SimpleNamespace

    import neuroreg.evaluate.runner as runner
    from neuroreg.precision import fp32_modes, fp32_settings

    seen = []

    def run(ctx):
        seen.append(fp32_modes("cuda"))
        if len(seen) == 2:
            raise RuntimeError("suite failed")
        return SimpleNamespace(summary={"x": 1.0}, records={})

    fake = SimpleNamespace(name="fake", needs_surrogate=False, run=run)
    fake.load = lambda: fake  # a declared suite imports its module on load(); this one has none
    monkeypatch.setattr(runner, "selected_suites", lambda ev: [fake])
    torch.set_float32_matmul_precision("high")
    before = fp32_settings()
    model = create_model("resnet18", 10, 1, width=8)
    summary = runner.evaluate_model(model, tiny(), data.splits.test, tmp_path / "ev")
    assert summary["x"] == 1.0 and seen == [{"fp32_conv": "ieee", "fp32_matmul": "ieee"}]
    assert fp32_settings() == before
    with pytest.raises(RuntimeError, match="suite failed"):
        runner.evaluate_model(model, tiny(), data.splits.test, tmp_path / "ev2")
    assert fp32_settings() == before
