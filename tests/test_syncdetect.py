"""No host syncs in the training step, checked on a CPU (issue 25, item 6).

neuroreg.syncdetect.SyncDetector records every call that would make the host wait for
the GPU in a CUDA run. Over a few steps of every target, with and without augmentation,
with both pairings, the only syncs allowed are the finiteness check every
``train.check_finite_every`` steps and the one read-back of the epoch's sums.
bench/gpu_check.py runs the CUDA counterpart (torch.cuda.set_sync_debug_mode).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroreg.config import RunConfig
from neuroreg.syncdetect import SyncDetector
from neuroreg.train import build_learner, prepare_data, train_epoch

CPU = torch.device("cpu")
N_REG = 40
STEPS, EVERY = 5, 2  # checks after steps 2, 4 and 5 (the last)
ALLOWED = ("_check_finite", "_epoch_totals")


# --- the detector itself ---------------------------------------------------------------


def test_detector_sees_the_usual_syncs_on_device_tensors_only():
    dev, host = torch.arange(6.0), torch.arange(6.0)
    det = SyncDetector().mark_device(dev)
    with det:
        y = dev * 2  # a device result
        y.sum().item()
        float(y[0])
        _ = f"{y.sum():.3f}"
        if y.sum() > 0:  # Tensor.__bool__
            pass
        y.nonzero()
        y[y > 2]  # boolean mask
        y.cpu()
        y.tolist()
        y.to("cpu")
        torch.arange(3).to(y.device)  # host data, blocking copy to the device
        y[torch.tensor([0, 1])]  # host index
        # none of these sync:
        host.sum().item(), host.tolist(), bool(host.sum()), host.nonzero()
        z = torch.arange(3).to(y.device, non_blocking=True)  # pinned-style async copy
        z.to(y.device)  # already there
        y[z], y[1:3], y.sum() * 2, torch.where(y > 2, y, 0.0)
        torch.zeros(3, device=y.device).add_(1)
    calls = [s.call for s in det.syncs]
    assert calls == [
        "Tensor.item", "Tensor.__float__", "Tensor.__format__", "Tensor.__bool__", "Tensor.nonzero (output size read back)",
        "Tensor.__getitem__ with a boolean mask (nonzero)", "Tensor.cpu", "Tensor.tolist",
        "blocking device-to-host .to('cpu')", "blocking host-to-device .to(device)",
        "Tensor.__getitem__ with a host index tensor (blocking host-to-device copy)",
    ], det.report()
    assert all(s.where.startswith("tests/test_syncdetect.py:") for s in det.syncs)
    assert all("test_detector_sees_the_usual_syncs_on_device_tensors_only" in s.stack for s in det.syncs)


def test_host_copies_are_host_tensors_and_modules_are_marked():
    model = torch.nn.Linear(3, 2)
    det = SyncDetector().mark_device(model)
    with det:
        out = model(torch.ones(4, 3))  # host input, device weights -> device output
        loss = out.sum()
        loss.backward()
        host = out.detach().cpu()
        host.tolist()  # a host tensor: no further sync
        model.weight.grad.sum().item()  # gradients are device tensors too
    assert [s.call for s in det.syncs] == ["Tensor.cpu", "Tensor.item"], det.report()


# --- a few training steps of every target ---------------------------------------------------


def _cfg(target: str, augment: bool, pairing: str, files: dict[str, str]) -> RunConfig:
    reg = {"target": target, "alpha": 1.0, "th": 0.5, "n": N_REG, "layers": ["conv1", "conv5"],
           "pairing": pairing, "n_pairs": 8, "batch_k": 8, **files}
    if target == "shuffle":
        reg["shuffle_of"] = "pixel_th"
    return RunConfig.from_dict({
        "data": {"name": "digits", "image_size": 16, "val_fraction": 0.15, "augment": augment, "crop_padding": 2},
        "model": {"width": 8},
        "regularizer": reg,
        "optim": {"lr": 0.01, "schedule": "constant"},
        "train": {"epochs": 1, "batch_size": 16, "seed": 0, "device": "cpu", "precision": "fp32",
                  "max_steps_per_epoch": STEPS, "check_finite_every": EVERY},
    })


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A neural response file and a small frozen network's weights for the features target."""
    import torchvision

    d = tmp_path_factory.mktemp("sync")
    responses = np.random.default_rng(0).poisson(3.0, size=(3, N_REG, 25)).astype(np.float32)
    np.save(d / "responses.npy", responses)
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), d / "squeezenet.pt")
    return {
        "neural": {"neural_responses": str(d / "responses.npy")},
        "features": {"features_weights": str(d / "squeezenet.pt"), "features_arch": "squeezenet1_1",
                     "features_layer": "features.3"},
    }


@pytest.fixture(scope="module")
def data():
    return prepare_data(_cfg("pixel", False, "pairs", {}))


def run_steps(cfg: RunConfig, data, progress: bool = False) -> SyncDetector:
    lrn = build_learner(cfg, data, CPU)
    x_train, y_train, x_reg = data.splits.train.images, data.splits.train.labels, data.reg.images
    det = SyncDetector().mark_device(lrn.model, lrn.head, lrn.target, lrn.opt, x_train, y_train, x_reg)
    with det:
        train_epoch(lrn, cfg, 0, x_train, y_train, x_reg, progress=progress)
    return det


@pytest.mark.parametrize("pairing", ["pairs", "batch"])
@pytest.mark.parametrize("augment", [False, True], ids=["plain", "augment"])
@pytest.mark.parametrize("target", ["pixel", "pixel_th", "neural", "features", "shuffle"])
def test_no_syncs_in_the_step(target, augment, pairing, files, data):
    det = run_steps(_cfg(target, augment, pairing, files.get(target, {})), data)
    assert not det.outside(*ALLOWED), det.report(det.outside(*ALLOWED))
    assert len(det.within("_check_finite")) == 3  # every EVERY steps and after the last
    assert len(det.within("_epoch_totals")) == 1


def test_a_sync_in_the_step_is_caught(data):
    """The positive control: the progress line's loss.item() is a per-step sync."""
    det = run_steps(_cfg("pixel_th", False, "pairs", {}), data, progress=True)
    bad = det.outside(*ALLOWED)
    assert len(bad) == STEPS and {s.call for s in bad} == {"Tensor.item"}, det.report(bad)
    assert all(s.stack[0] == "train_epoch" for s in bad)
