"""Accuracy under additive random noise in [0, 1] pixel space (METHOD.md section 2)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from neuroreg.evaluate.common import progress, subset_index
from neuroreg.evaluate.suite import SuiteContext, SuiteOutput, fmt_level, register_suite

if TYPE_CHECKING:
    from neuroreg.config import RunConfig

NOISE_TYPES = ("gaussian", "uniform", "salt_pepper")


def gaussian_noise(x: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return (x + sigma * noise).clamp_(0.0, 1.0)


def uniform_noise(x: Tensor, eps: float, generator: torch.Generator) -> Tensor:
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return (x + eps * (2.0 * noise - 1.0)).clamp_(0.0, 1.0)


def salt_pepper_noise(x: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Each pixel (all channels together) becomes 0 or 1 with probability p, half each."""
    shape = (x.shape[0], 1, *x.shape[2:])
    u = torch.rand(shape, generator=generator, dtype=x.dtype, device=x.device)
    out = x.clone()
    out = torch.where(u < p / 2, torch.zeros_like(x), out)
    out = torch.where((u >= p / 2) & (u < p), torch.ones_like(x), out)
    return out


_NOISE = {"gaussian": gaussian_noise, "uniform": uniform_noise, "salt_pepper": salt_pepper_noise}


def add_noise(x: Tensor, kind: str, level: float, generator: torch.Generator) -> Tensor:
    """Noisy copy of float images in [0, 1]; level 0 returns an exact copy."""
    if kind not in _NOISE:
        raise ValueError(f"unknown noise {kind!r}; choose from {NOISE_TYPES}")
    if level == 0:
        return x.clone()
    return _NOISE[kind](x, float(level), generator)


def noise_seed(seed: int, kind: str, level_index: int) -> int:
    """A fixed seed per (run seed, noise type, level) so every model sees the same noise."""
    return (seed * 1_000_003 + NOISE_TYPES.index(kind) * 1009 + level_index) % (2**63 - 1)


@torch.no_grad()
def noise_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    levels: Mapping[str, Sequence[float]],
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    show_progress: bool = True,
) -> list[dict]:
    """Records ``{noise, level, accuracy, n}`` for every noise type and level.

    The noise of one batch depends only on (seed, type, level, batch index): one CPU
    generator per level draws batch after batch, so results do not depend on the device.
    """
    model.eval()
    y = y.cpu()
    jobs = [(kind, i, float(lv)) for kind, lvs in levels.items() for i, lv in enumerate(lvs)]
    records = []
    for kind, i, level in progress(jobs, "noise", enabled=show_progress):
        gen = torch.Generator().manual_seed(noise_seed(seed, kind, i))
        correct = 0
        for b in range(0, len(x), batch_size):
            xb = add_noise(x[b : b + batch_size].cpu(), kind, level, gen)
            pred = model(xb.to(device)).argmax(dim=1).cpu()
            correct += int((pred == y[b : b + batch_size]).sum())
        records.append({"noise": kind, "level": level, "accuracy": correct / max(len(x), 1), "n": len(x)})
    return records


def _metrics(cfg: RunConfig) -> set[str]:
    levels = cfg.evaluation.levels_for(cfg.data.name)
    return {f"noise_acc_{k}_{fmt_level(lv)}" for k, lvs in levels.items() for lv in lvs} | {"noise_acc_mean"}


@register_suite("noise", metrics=_metrics, headline=("noise_acc_mean",))
def run_suite(ctx: SuiteContext) -> SuiteOutput:
    """Accuracy under Gaussian, uniform and salt-and-pepper noise at every level."""
    ev = ctx.ev
    idx = subset_index(len(ctx.test), ev.noise_n_images, ev.seed)
    recs = noise_accuracy(ctx.model, ctx.x_all[idx], ctx.y_all[idx], ev.levels_for(ctx.cfg.data.name), ev.seed,
                          ev.batch_size, ctx.device, ev.progress)
    summary = {f"noise_acc_{r['noise']}_{fmt_level(r['level'])}": r["accuracy"] for r in recs}
    positive = [r["accuracy"] for r in recs if r["level"] > 0]
    summary["noise_acc_mean"] = sum(positive) / len(positive) if positive else math.nan
    return SuiteOutput({"noise": recs}, summary)
