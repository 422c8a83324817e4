"""Time per optimizer step: plain vs joint (16 pairs) vs joint with batch pairing (K = 32).

ResNet18, 32x32 grayscale, batch 64, SGD; the trainer's own ``joint_loss``. Prints a
table with the ratios joint/plain and pairs per second.

    python bench/joint_step.py [--widths 16 64] [--steps 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from neuroreg.config import RunConfig
from neuroreg.models import create_model
from neuroreg.similarity import SimilarityHead
from neuroreg.targets import build_target
from neuroreg.train import joint_loss


def bench(width: int, mode: str, steps: int, warmup: int, device: torch.device) -> tuple[float, int]:
    """Seconds per step and pairs per step of one configuration."""
    reg = {"target": "pixel_th", "alpha": 1.0, "th": 0.8, "n": 1000}
    if mode == "plain":
        reg = {"target": "none", "alpha": 0.0}
    elif mode == "batch":
        reg.update(pairing="batch", batch_k=32)
    cfg = RunConfig.from_dict({"model": {"width": width}, "regularizer": reg, "train": {"device": str(device)}})
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, in_chans=1, width=width).to(device)
    x = torch.rand(64, 1, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (64,), generator=g).to(device)
    x_reg = torch.randint(0, 256, (1000, 1, 32, 32), generator=g, dtype=torch.uint8).to(device)
    head = target = None
    params = list(model.parameters())
    if mode != "plain":
        layers = cfg.regularizer.layers
        with torch.no_grad():
            chans = [f.shape[1] for f in model.features(x[:2], layers).values()]
        head = SimilarityHead(layers, chans).to(device)
        target = build_target(cfg.regularizer, x_reg.cpu()).to(device)
        params.append(head.layer_logits)
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    model.train()
    pairs = 0
    for k in range(warmup + steps):
        if k == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        loss, _, _, _, pairs = joint_loss(model, head, target, cfg, x, y, x_reg, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps, pairs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, {a.steps} timed steps")
    print(f"{'width':>5} {'mode':<22} {'ms/step':>9} {'x plain':>8} {'pairs/step':>10} {'pairs/s':>9}")
    for w in a.widths:
        base = None
        for mode, label in [("plain", "plain (64 img)"), ("pairs", "joint 64 + 16 pairs"), ("batch", "joint 64 + K=32 batch")]:
            sec, pairs = bench(w, mode, a.steps, a.warmup, device)
            base = base or sec
            print(f"{w:>5} {label:<22} {sec * 1e3:>9.1f} {sec / base:>8.2f} {pairs:>10} {pairs / sec:>9.0f}")


if __name__ == "__main__":
    main()
