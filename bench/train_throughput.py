"""Training throughput of the real trainer against a plain PyTorch loop, side by side.

ResNet18, 32x32 grayscale (sklearn's digits upsampled, offline), batch 64, SGD momentum 0.9.
Rows per width, in one run:

- ``plain loop fp32``: the loop a user would write (forward, cross entropy, backward, step);
- ``trainer fp32``: ``neuroreg.train.train`` with ``precision=fp32``, contiguous layout;
- ``trainer fp32 + channels_last``;
- ``trainer bf16 + channels_last`` (autocast; similarity and losses in fp32);
- optionally ``trainer <best> + compile`` (``--compile``);

each as baseline (``target=none``) and regularized (pixel_th, 16 pairs, all five layers).
The trainer's rows are its own ``images_per_s`` record (classification images per second
of the step loop) of its second epoch, so warm-up is excluded. ``x plain`` is the ratio
to the plain loop of the same width; ``reg/base`` the regularized row over the baseline
row of the same setting (the cost of the similarity loss).

    python bench/train_throughput.py [--widths 16 64] [--steps 12] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

from neuroreg.config import RunConfig
from neuroreg.models import create_model
from neuroreg.precision import device_has_fast_bf16
from neuroreg.train import prepare_data, train

REG = {"target": "pixel_th", "alpha": 4.0, "th": 0.2, "n": 1000, "n_pairs": 16,
       "layers": ["conv1", "conv5", "conv9", "conv13", "conv17"]}


def run_config(width: int, steps: int, device: str, threads: int, regularized: bool, **train_over) -> RunConfig:
    return RunConfig.from_dict({
        "data": {"name": "digits", "image_size": 32, "val_fraction": 0.05, "augment": False},
        "model": {"name": "resnet18", "width": width},
        "regularizer": REG if regularized else {"target": "none"},
        "optim": {"lr": 0.05, "momentum": 0.9, "schedule": "constant"},
        "train": {"epochs": 2, "batch_size": 64, "max_steps_per_epoch": steps, "device": device,
                  "num_threads": threads, "seed": 0, **train_over},
    })


def plain_loop(width: int, steps: int, device: torch.device, x_u8: torch.Tensor, y: torch.Tensor) -> float:
    """Images/s of the loop a user would write: fp32, NCHW, batches from a float tensor."""
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, in_chans=1, width=width).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x_all, y_all = (x_u8.float() / 255).to(device), y.to(device)
    bs, n = 64, len(y)

    def step(k: int) -> None:
        idx = torch.arange(k * bs, (k + 1) * bs, device=device) % n
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()

    for k in range(steps):  # warm-up, like the trainer's first epoch
        step(k)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for k in range(steps):
        step(k)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * bs / (time.perf_counter() - t0)


def trainer_rate(cfg: RunConfig, data) -> tuple[float, str, bool]:
    """(images/s of the second epoch, precision used, channels_last used)."""
    with tempfile.TemporaryDirectory() as out:
        h = train(cfg, out, data=data).history[-1]
    return h["images_per_s"], h["precision"], h["channels_last"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    p.add_argument("--steps", type=int, default=12, help="timed steps per row (after as many warm-up steps)")
    p.add_argument("--slow-bf16-steps", type=int, default=3,
                   help="steps of the bf16 rows where the device has no native bf16 (they are ~10x slower)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="add a torch.compile row")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    fast = device_has_fast_bf16(device)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else torch.backends.cpu.get_cpu_capability()}), "
          f"native bf16: {'yes' if fast else 'no'}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{a.steps} timed steps per row, batch 64, 32x32 grayscale")
    settings = [
        ("trainer fp32", {"precision": "fp32", "channels_last": False}),
        ("trainer fp32 + channels_last", {"precision": "fp32", "channels_last": True}),
        ("trainer bf16 + channels_last", {"precision": "bf16", "channels_last": True}),
    ]
    if a.compile:
        best = {"precision": "bf16" if fast else "fp32", "channels_last": True}
        settings.append((f"trainer {best['precision']} + channels_last + compile", {**best, "compile": True}))
    print("| width | setting | training | images/s | x plain | reg/base |")
    print("| ---: | --- | --- | ---: | ---: | ---: |")
    for w in a.widths:
        data_reg = prepare_data(run_config(w, a.steps, a.device, a.threads, True))
        data_base = prepare_data(run_config(w, a.steps, a.device, a.threads, False))
        plain = plain_loop(w, a.steps, device, data_base.splits.train.images, data_base.splits.train.labels)
        print(f"| {w} | plain loop fp32 | baseline | {plain:.0f} | 1.00 | |", flush=True)
        for label, over in settings:
            steps = a.steps if over["precision"] != "bf16" or fast else a.slow_bf16_steps
            rates = {}
            for regularized, data in ((False, data_base), (True, data_reg)):
                cfg = run_config(w, steps, a.device, a.threads, regularized, **over)
                rate, prec, cl = trainer_rate(cfg, data)
                rates[regularized] = rate
                name = label if cl == over["channels_last"] else f"{label} (channels_last refused)"
                assert prec == over["precision"], (prec, over)
                kind = "regularized" if regularized else "baseline"
                ratio = f"{rates[False] / rate:.2f}" if regularized else ""
                print(f"| {w} | {name} | {kind} | {rate:.0f} | {rate / plain:.2f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
