"""Frequency analysis of a classifier (Li et al. 2023; METHOD.md section 3).

Three probes of how much a model relies on low spatial frequencies:

* the power spectrum of its minimal adversarial perturbations, summarised by the
  half-power frequency f0.5;
* hybrid images (low frequencies of one image + high frequencies of another of a
  different class), summarised by the reversal frequency f_rev;
* corruption accuracy grouped by the corruptions' frequency character.

Frequencies are in cycles per pixel (Nyquist = 0.5) unless a name says otherwise;
the hybrid mixing frequency ``c`` is a fraction of Nyquist, as in Li et al. Fig. 3.

All maths are small pure functions over tensors; :func:`run_frequency` turns them into
the tidy records of ``frequency.jsonl`` (see the ``kind`` values below).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from neuroreg.errors import ConfigError
from neuroreg.evaluate.suite import SuiteContext, SuiteOutput, register_suite

NYQUIST = 0.5
"""Nyquist frequency in cycles per pixel."""

F05_DEFINITION = (
    "f05: radial spatial frequency |f| (cycles/pixel, Nyquist 0.5) at which the cumulative "
    "power of the mean perturbation spectrum (mean over images of |fftshift(fft2(delta))|^2, "
    "channels averaged) first reaches 50 % of the power within |f| <= 0.5 (DC included, the "
    "corners beyond Nyquist excluded, METHOD.md); cumulative power is taken at the upper edges of {n_bins} "
    "equal bins over [0, {f_max}] (starting from 0 at f = 0) and linearly interpolated"
)
F_REV_DEFINITION = (
    "f_rev: mixing frequency c (fraction of Nyquist 0.5 cycles/pixel) at which p_low - p_high "
    "first crosses zero from below, linearly interpolated between grid points; hybrid = "
    "ifft2(F_low * mask + F_high * (1 - mask)) clipped to [0, 1] with the radial mask "
    "|f| <= c * 0.5 for c < 1 (c = 0 takes only the low image's DC) and the whole spectrum for c >= 1"
)
FREQUENCY_GROUPS = ("low", "mid", "high")


# --- spectra ---------------------------------------------------------------------


def frequency_grid(height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """|f| in cycles/pixel for each entry of an fftshift-ed ``height x width`` spectrum."""
    fy = torch.fft.fftshift(torch.fft.fftfreq(height, dtype=torch.float64, device=device))
    fx = torch.fft.fftshift(torch.fft.fftfreq(width, dtype=torch.float64, device=device))
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def power_spectrum(delta: Tensor) -> Tensor:
    """Mean power spectrum ``H x W`` (fftshift-ed, DC in the centre) of ``N x C x H x W``.

    Power is |fft2|^2 per image and channel, averaged over images and channels.
    """
    if delta.dim() != 4:
        raise ValueError(f"delta must be N x C x H x W, got shape {tuple(delta.shape)}")
    if delta.shape[0] == 0:
        raise ValueError("delta holds no images (N = 0)")
    spec = torch.fft.fftshift(torch.fft.fft2(delta.double()), dim=(-2, -1))
    return (spec.abs() ** 2).mean(dim=(0, 1)).float()


def radial_profile(
    spectrum: Tensor, n_bins: int = 25, f_max: float = NYQUIST
) -> tuple[Tensor, Tensor]:
    """Radial profile of a centred ``H x W`` power spectrum.

    Returns ``(bin_centres, power)``: ``power[k]`` is the *summed* power of all
    frequencies with ``edges[k] <= |f| < edges[k + 1]`` (``edges = linspace(0, f_max,
    n_bins + 1)``, the last bin closed), so that its cumulative sum is the power below a
    frequency. Power at |f| > f_max (the corners of the square spectrum) is in no bin.
    """
    if spectrum.dim() != 2:
        raise ValueError(f"spectrum must be H x W, got shape {tuple(spectrum.shape)}")
    if n_bins < 1 or f_max <= 0:
        raise ValueError(f"need n_bins >= 1 and f_max > 0, got n_bins={n_bins}, f_max={f_max}")
    radius = frequency_grid(*spectrum.shape, device=spectrum.device).double()
    width = f_max / n_bins
    # The tolerance keeps grid frequencies that sit on a bin edge (k/N = j * width) from
    # dropping into the bin below through rounding.
    idx = torch.floor(radius / width + 1e-6).long()
    # Frequencies exactly at f_max belong to the last (closed) bin, not past it.
    idx = torch.where(
        torch.isclose(radius, torch.tensor(f_max, dtype=radius.dtype)), n_bins - 1, idx
    )
    inside = idx < n_bins
    power = torch.zeros(n_bins, dtype=torch.float64, device=spectrum.device)
    power.index_add_(0, idx[inside], spectrum.double()[inside])
    centres = (torch.arange(n_bins, dtype=torch.float64, device=spectrum.device) + 0.5) * width
    return centres.float(), power.float()


def power_within(spectrum: Tensor, f: float) -> Tensor:
    """Summed power of a centred spectrum at |f| <= ``f`` (the f0.5 denominator at Nyquist)."""
    radius = frequency_grid(*spectrum.shape, device=spectrum.device)
    return spectrum.double()[radius <= f + 1e-9].sum()


def cumulative_power(power: Tensor, total: float | Tensor | None = None) -> Tensor:
    """Fraction of ``total`` power (default: the profile's sum) up to each bin's upper edge."""
    denom = power.sum() if total is None else torch.as_tensor(total, dtype=power.dtype)
    if not float(denom) > 0:
        raise ValueError("total power must be > 0 (an all-zero perturbation has no spectrum)")
    return torch.cumsum(power, 0) / denom


def half_power_frequency(bin_centres: Tensor, cumulative: Tensor) -> float:
    """f0.5: where ``cumulative`` (at the bins' upper edges) first reaches 0.5.

    Linear interpolation between upper bin edges, starting from cumulative 0 at f = 0;
    NaN if the cumulative never reaches 0.5 (most power beyond the last bin).
    """
    width = (
        float(bin_centres[1] - bin_centres[0])
        if len(bin_centres) > 1
        else 2 * float(bin_centres[0])
    )
    edges = [0.0] + [float(c) + width / 2 for c in bin_centres]
    values = [0.0] + [float(v) for v in cumulative]
    for k in range(1, len(values)):
        if values[k] >= 0.5:
            lo, hi = values[k - 1], values[k]
            t = (0.5 - lo) / (hi - lo)
            return edges[k - 1] + t * (edges[k] - edges[k - 1])
    return math.nan


# --- hybrid images ---------------------------------------------------------------


def lowpass_mask(
    height: int, width: int, c: float, device: torch.device | str | None = None
) -> Tensor:
    """Radial low-pass mask (fftshift-ed, 1 = taken from the low image) at mixing frequency c.

    ``|f| <= c * Nyquist`` for ``c < 1`` (METHOD.md), so c = 0 takes the low image's DC
    (its mean) and nothing else; ``c >= 1`` takes the whole spectrum, including the corners
    up to |f| = 0.707, so that c = 1 gives exactly the low image. (Only the corners, which
    carry little power in natural images, switch between c just below 1 and c = 1.)
    """
    if not 0.0 <= c:
        raise ValueError(f"mixing frequency c must be >= 0 (fraction of Nyquist), got {c}")
    if c >= 1.0:
        return torch.ones(height, width, device=device)
    # The tolerance keeps grid frequencies exactly on the circle inside despite rounding.
    return (frequency_grid(height, width, device=device) <= c * NYQUIST + 1e-9).float()


def hybrid(x_low: Tensor, x_high: Tensor, c: float) -> Tensor:
    """Hybrid of the low frequencies of ``x_low`` and the high ones of ``x_high`` (``... x H x W``).

    ``ifft2(F_low * mask + F_high * (1 - mask))`` with :func:`lowpass_mask`, clipped to [0, 1].
    """
    if x_low.shape != x_high.shape:
        raise ValueError(
            f"x_low and x_high differ in shape: {tuple(x_low.shape)} vs {tuple(x_high.shape)}"
        )
    mask = torch.fft.ifftshift(lowpass_mask(*x_low.shape[-2:], c, device=x_low.device))
    f_low = torch.fft.fft2(x_low.double())
    f_high = torch.fft.fft2(x_high.double())
    mixed = torch.fft.ifft2(f_low * mask + f_high * (1 - mask)).real
    return mixed.clamp(0.0, 1.0).to(x_low.dtype)


def hybrid_pairs(labels: Tensor, n_pairs: int, seed: int) -> tuple[Tensor, Tensor]:
    """Deterministic ``(low_idx, high_idx)`` index pairs whose labels differ.

    The low sources walk a seeded permutation (cycling if ``n_pairs > N``); each gets as
    high source the next entry of a second permutation with a different label.
    """
    labels = labels.cpu()
    n = len(labels)
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    if labels.unique().numel() < 2:
        raise ValueError("hybrid images need test images of at least two classes")
    g = torch.Generator().manual_seed(seed)
    perm_low = torch.randperm(n, generator=g).tolist()
    perm_high = torch.randperm(n, generator=g).tolist()
    low, high = [], []
    j = 0
    for k in range(n_pairs):
        i = perm_low[k % n]
        while labels[perm_high[j % n]] == labels[i]:
            j += 1
        low.append(i)
        high.append(perm_high[j % n])
        j += 1
    return torch.tensor(low), torch.tensor(high)


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def hybrid_curves(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    cs: Sequence[float],
    n_pairs: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> tuple[Tensor, Tensor]:
    """``(p_low, p_high)`` over ``cs``: fractions of hybrids classified as the low / high source's class.

    ``images`` are [0, 1] floats ``N x C x H x W``; the model is put in eval mode.
    """
    low_idx, high_idx = hybrid_pairs(labels, n_pairs, seed)
    x_low = images[low_idx].to(device)
    x_high = images[high_idx].to(device)
    y_low = labels[low_idx].to(device)
    y_high = labels[high_idx].to(device)
    # The FFTs are shared by all c; only the mask changes.
    f_low = torch.fft.fft2(x_low.double())
    f_high = torch.fft.fft2(x_high.double())
    model.eval()
    p_low, p_high = [], []
    for c in cs:
        mask = torch.fft.ifftshift(lowpass_mask(*images.shape[-2:], float(c), device=device))
        x = torch.fft.ifft2(f_low * mask + f_high * (1 - mask)).real.clamp(0, 1).to(images.dtype)
        pred = _predict(model, x, batch_size)
        p_low.append((pred == y_low).float().mean())
        p_high.append((pred == y_high).float().mean())
    return torch.stack(p_low).cpu(), torch.stack(p_high).cpu()


class Reversal(NamedTuple):
    f_rev: float
    """Mixing frequency (fraction of Nyquist) where p_low = p_high; NaN if none."""
    reason: str
    """Why f_rev is NaN ("" when found)."""


def reversal_frequency(
    cs: Sequence[float], p_low: Sequence[float], p_high: Sequence[float]
) -> Reversal:
    """First upward zero crossing of ``p_low - p_high`` over ``cs``, linearly interpolated."""
    cs = [float(c) for c in cs]
    d = [float(a) - float(b) for a, b in zip(p_low, p_high, strict=True)]
    if len(cs) != len(d):
        raise ValueError(f"cs has {len(cs)} entries but the curves have {len(d)}")
    if any(b <= a for a, b in pairwise(cs)):
        raise ValueError("cs must be strictly increasing")
    for k in range(len(d) - 1):
        if d[k] < 0 <= d[k + 1]:
            t = -d[k] / (d[k + 1] - d[k])
            return Reversal(cs[k] + t * (cs[k + 1] - cs[k]), "")
    if d and d[0] == 0:
        return Reversal(cs[0], "")
    if all(v > 0 for v in d):
        return Reversal(math.nan, "p_low > p_high at every c (no crossing)")
    if all(v < 0 for v in d):
        return Reversal(math.nan, "p_low < p_high at every c (no crossing)")
    return Reversal(math.nan, "p_low - p_high never crosses zero from below")


# --- corruptions -----------------------------------------------------------------


def group_corruptions(records: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Mean corruption accuracy per frequency group (low / mid / high).

    Accuracy is averaged over severities per corruption first, then over the corruptions
    of a group (equal weight per corruption, as Li et al. Fig. 2c). A group without
    records is NaN.
    """
    per_corruption: dict[tuple[str, str], list[float]] = {}
    for i, r in enumerate(records):
        for key in ("corruption", "frequency", "accuracy"):
            if key not in r:
                raise ValueError(f"corruption record {i} lacks {key!r}: {dict(r)}")
        if r["frequency"] not in FREQUENCY_GROUPS:
            raise ValueError(
                f"corruption record {i}: frequency {r['frequency']!r} is not one of {FREQUENCY_GROUPS}"
            )
        per_corruption.setdefault((r["frequency"], r["corruption"]), []).append(
            float(r["accuracy"])
        )
    out = {}
    for group in FREQUENCY_GROUPS:
        means = [sum(v) / len(v) for (g, _), v in per_corruption.items() if g == group]
        out[group] = sum(means) / len(means) if means else math.nan
    return out


# --- records ---------------------------------------------------------------------

DEFAULT_CS = tuple(round(0.05 * k, 2) for k in range(21))
"""Default hybrid mixing grid: 0, 0.05, ..., 1 (fraction of Nyquist)."""


def spectrum_records(
    norm: str, delta: Tensor, n_bins: int = 25, f_max: float = NYQUIST
) -> list[dict]:
    """Records of one norm's perturbation spectrum: kind=spectrum (radial), spectrum2d, summary.

    Perturbations that are all zero (already misclassified images) or not finite
    (failed attacks) are left out; ``n`` counts those used.
    """
    flat = delta.flatten(1)
    keep = torch.isfinite(flat).all(1) & (flat.abs().sum(1) > 0)
    delta = delta[keep]
    if len(delta) == 0:
        return [_summary_f05(norm, math.nan, 0, "no finite, non-zero perturbation")]
    spec = power_spectrum(delta)
    centres, power = radial_profile(spec, n_bins, f_max)
    total = power_within(spec, NYQUIST)
    if not float(total) > 0:  # all power beyond Nyquist (a checkerboard): f0.5 is never reached
        total = spec.double().sum()
    cum = cumulative_power(power.double(), total)
    rel = power.double() / total
    rows = [
        {
            "kind": "spectrum",
            "norm": norm,
            "bin": k,
            "f": float(centres[k]),
            "f_upper": float(centres[k]) + f_max / (2 * n_bins),
            "power": float(rel[k]),
            "cumulative": float(cum[k]),
        }
        for k in range(n_bins)
    ]
    h, w = spec.shape
    fy = torch.fft.fftshift(torch.fft.fftfreq(h)).tolist()
    fx = torch.fft.fftshift(torch.fft.fftfreq(w)).tolist()
    spec_rel = (spec.double() / total).tolist()
    rows += [
        {"kind": "spectrum2d", "norm": norm, "fy": fy[i], "fx": fx[j], "power": spec_rel[i][j]}
        for i in range(h)
        for j in range(w)
    ]
    f05 = half_power_frequency(centres, cum)
    reason = "" if math.isfinite(f05) else f"cumulative power below {f_max} never reaches 50 %"
    rows.append(_summary_f05(norm, f05, len(delta), reason, n_bins, f_max))
    return rows


def _summary_f05(
    norm: str, f05: float, n: int, reason: str, n_bins: int = 25, f_max: float = NYQUIST
) -> dict:
    return {
        "kind": "summary",
        "metric": "f05",
        "norm": norm,
        "f05": f05,
        "value": f05,
        "n": n,
        "reason": reason,
        "definition": F05_DEFINITION.format(n_bins=n_bins, f_max=f_max),
    }


def run_frequency(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    perturbations: Mapping[str, Tensor | None],
    cfg: Any,
    device: torch.device | str = "cpu",
    corruption_records: Iterable[Mapping[str, Any]] | None = None,
) -> list[dict]:
    """Tidy records of the frequency suite (one ``frequency.jsonl``).

    ``images``: [0, 1] floats ``N x C x H x W`` (the hybrid sources), ``labels``: int64 N;
    ``perturbations``: norm name -> ``x_adv - x`` (``N x C x H x W``) or None when that
    attack did not run; ``cfg``: the evaluation config, read for ``frequency_cs``
    (mixing grid, fraction of Nyquist), ``hybrid_pairs`` (number of pairs), ``seed``,
    ``spectrum_bins`` (25).

    Record kinds: ``spectrum`` (norm, bin, f = bin centre, f_upper = upper bin edge,
    power as a fraction of the total, cumulative = fraction of the total up to f_upper), ``spectrum2d`` (norm, fy, fx, power; the centred 2-D spectrum as a
    fraction of the total), ``hybrid`` (c, p_low, p_high, n), ``summary`` (metric f05 per
    norm, or f_rev; each with ``value``, ``reason`` and ``definition``), and, when
    ``corruption_records`` are given, ``corruption_group`` (frequency, accuracy).
    """
    cs_cfg = getattr(cfg, "frequency_cs", None)
    cs = [float(c) for c in (DEFAULT_CS if cs_cfg is None else cs_cfg)]
    n_pairs = int(getattr(cfg, "hybrid_pairs", 1000))
    seed = int(getattr(cfg, "seed", 0))
    n_bins = int(getattr(cfg, "spectrum_bins", 25))
    # Check settings before any model evaluation.
    if len(cs) < 2 or any(c < 0 or c > 1 for c in cs) or any(b <= a for a, b in pairwise(cs)):
        raise ConfigError(
            "evaluation.frequency_cs",
            f"needs >= 2 values increasing strictly within [0, 1] (fractions of Nyquist), got {cs}",
        )
    if n_pairs < 1:
        raise ConfigError("evaluation.hybrid_pairs", f"must be >= 1, got {n_pairs}")
    if n_bins < 2:
        raise ConfigError("evaluation.spectrum_bins", f"must be >= 2, got {n_bins}")
    if not images.is_floating_point():
        raise ValueError(
            f"images must be [0, 1] floats (see neuroreg.images.to_float), got {images.dtype}"
        )
    if images.dim() != 4 or len(images) != len(labels):
        raise ValueError(
            f"images must be N x C x H x W with one label each, got {tuple(images.shape)} and {len(labels)} labels"
        )

    records: list[dict] = []
    for norm, delta in perturbations.items():
        if delta is None:
            records.append(_summary_f05(norm, math.nan, 0, "attack did not run", n_bins))
        else:
            records += spectrum_records(norm, delta.detach().cpu().float(), n_bins)

    p_low, p_high = hybrid_curves(model, images, labels, cs, n_pairs, seed, device)
    records += [
        {"kind": "hybrid", "c": c, "p_low": float(a), "p_high": float(b), "n": n_pairs}
        for c, a, b in zip(cs, p_low, p_high, strict=True)
    ]
    rev = reversal_frequency(cs, p_low.tolist(), p_high.tolist())
    records.append(
        {
            "kind": "summary",
            "metric": "f_rev",
            "f_rev": rev.f_rev,
            "value": rev.f_rev,
            "n": n_pairs,
            "reason": rev.reason,
            "definition": F_REV_DEFINITION,
        }
    )

    if corruption_records is not None:
        groups = group_corruptions(corruption_records)
        records += [
            {"kind": "corruption_group", "frequency": g, "accuracy": a} for g, a in groups.items()
        ]
    return records


@register_suite("frequency", metrics=lambda cfg: None, headline=("f_rev", "f05_l2", "f05_linf"))
def run_suite(ctx: SuiteContext) -> SuiteOutput:
    """Spectra of the adversarial perturbations, hybrid-image reversal frequency, corruption groups."""
    adversarial = ctx.shared.get("adversarial", {})
    perts = {}
    for norm in ctx.ev.norms:
        res = adversarial.get(norm)
        if res is None:
            perts[norm] = None
            continue
        # Only images an attack actually moved: unbroken and misclassified ones have no delta.
        keep = (torch.isfinite(res.distances) & (res.distances > 0)).to(ctx.x_adv.device)
        perts[norm] = (res.adversarials - ctx.x_adv)[keep].cpu() if keep.any() else None
    recs = run_frequency(ctx.model, ctx.x_adv, ctx.y_adv, perts, ctx.ev, ctx.device,
                         corruption_records=ctx.shared.get("corruptions"))
    summary = {}
    for r in recs:
        if r.get("kind") == "summary":
            key, norm = r.get("metric", "f"), r.get("norm")
            summary[f"{key}_{norm}" if norm else key] = r.get("value")
    return SuiteOutput({"frequency": recs}, summary)

