"""A simulated V1-like population, for tests and demos of the neural target without recordings.

Each neuron is a complex cell of a Gabor energy model (random position, orientation,
spatial frequency, size), its rate a rectified, gained energy; trial responses are Poisson
spike counts, so repeats carry realistic noise and the SNR weights of the neural target
are meaningful. Output format = the neural target's input: repeats x stimuli x neurons.

    python -m neuroreg.v1sim --config run.yaml --set regularizer.n=500 --out responses.npy
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def gabor_bank(n: int, size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Even and odd Gabor filters (n x size x size) with random position, orientation, frequency."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    cx = rng.uniform(0.2, 0.8, n) * size
    cy = rng.uniform(0.2, 0.8, n) * size
    theta = rng.uniform(0, math.pi, n)
    freq = rng.uniform(0.06, 0.25, n)  # cycles per pixel
    sigma = rng.uniform(0.35, 0.6, n) / freq
    even, odd = [], []
    for k in range(n):
        xr = (xs - cx[k]) * math.cos(theta[k]) + (ys - cy[k]) * math.sin(theta[k])
        yr = -(xs - cx[k]) * math.sin(theta[k]) + (ys - cy[k]) * math.cos(theta[k])
        env = np.exp(-(xr**2 + yr**2) / (2 * sigma[k] ** 2))
        e = env * np.cos(2 * math.pi * freq[k] * xr)
        o = env * np.sin(2 * math.pi * freq[k] * xr)
        even.append(e - e.mean() * env / env.mean())  # zero DC response
        odd.append(o)
    return torch.tensor(np.array(even), dtype=torch.float32), torch.tensor(np.array(odd), dtype=torch.float32)


def simulate_v1_responses(
    images: torch.Tensor,
    n_neurons: int = 200,
    n_repeats: int = 4,
    mean_rate: float = 5.0,
    seed: int = 0,
) -> np.ndarray:
    """Poisson responses (repeats x stimuli x neurons, float32) of a Gabor-energy population."""
    rng = np.random.default_rng(seed)
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    x = x.mean(dim=1)  # grey, N x H x W
    n, h, w = x.shape
    size = max(h, w)
    if h != w:
        x = F.interpolate(x[:, None], size=(size, size), mode="bilinear", antialias=True)[:, 0]
    even, odd = gabor_bank(n_neurons, size, rng)
    flat = x.reshape(n, -1) - 0.5
    energy = torch.sqrt((flat @ even.reshape(n_neurons, -1).T) ** 2 + (flat @ odd.reshape(n_neurons, -1).T) ** 2)
    rate = energy / energy.mean(dim=0, keepdim=True).clamp_min(1e-8) * mean_rate
    gen = torch.Generator().manual_seed(seed)
    counts = torch.poisson(rate.expand(n_repeats, -1, -1).contiguous(), generator=gen)
    return counts.numpy().astype(np.float32)


MAX_NEURONS = 100_000
MAX_REPEATS = 1000
MAX_VALUES = 1 << 31
"""Most values (repeats x stimuli x neurons) simulated: 8 GiB of float32."""


def check_flags(a: argparse.Namespace) -> Path:
    """--neurons, --repeats, --seed, --rate and --out, before any data is loaded; returns the output path."""
    from neuroreg.config import ConfigError
    from neuroreg.paths import check_output_folder

    if not 1 <= a.neurons <= MAX_NEURONS:
        raise ConfigError("--neurons", f"must lie in [1, {MAX_NEURONS}], got {a.neurons}")
    if not 2 <= a.repeats <= MAX_REPEATS:
        raise ConfigError("--repeats", f"must lie in [2, {MAX_REPEATS}] (the neural target's SNR weights need "
                                       f">= 2 repeats), got {a.repeats}")
    if not 0 <= a.seed < 2**63:
        raise ConfigError("--seed", f"must lie in [0, 2^63 - 1], got {a.seed}")
    if not 0 < a.rate < math.inf:
        raise ConfigError("--rate", f"must be a finite number > 0, got {a.rate}")
    out = Path(a.out)
    if out.suffix != ".npy":
        raise ConfigError("--out", f"{out} must end in .npy (np.save would write {out}.npy instead)")
    if out.is_dir() or (out.exists() and not out.is_file()):
        raise ConfigError("--out", f"{out} is a folder or not a regular file; give a file name ending in .npy")
    check_output_folder(out.parent if str(out.parent) else ".", "--out")
    return out


def main(argv: list[str] | None = None) -> int:
    from neuroreg.atomic import atomic_write
    from neuroreg.config import ConfigError, RunConfig, apply_overrides
    from neuroreg.data import load_regularization_set

    p = argparse.ArgumentParser(
        prog="python -m neuroreg.v1sim",
        description="Simulated V1 responses to the regularization set of a run config, in its order.",
    )
    p.add_argument("--config", help="the run config the responses are for (its data and regularizer sections)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field, e.g. regularizer.n=500")
    p.add_argument("--neurons", type=int, default=200, help=f"simulated neurons (1 ... {MAX_NEURONS})")
    p.add_argument("--repeats", type=int, default=4, help=f"trials per stimulus (2 ... {MAX_REPEATS})")
    p.add_argument("--rate", type=float, default=5.0, help="mean spike count per trial")
    p.add_argument("--seed", type=int, default=0, help="seed of the population and the spike noise")
    p.add_argument("--out", required=True, help="the .npy file to write (repeats x stimuli x neurons)")
    a = p.parse_args(argv)
    try:
        out = check_flags(a)
        cfg = RunConfig.from_yaml(a.config, a.set) if a.config else RunConfig.from_dict(apply_overrides({}, a.set))
        n_values = a.repeats * cfg.regularizer.n * a.neurons
        if n_values > MAX_VALUES:
            raise ConfigError("--neurons", f"{a.repeats} repeats x {cfg.regularizer.n} stimuli x {a.neurons} neurons "
                                           f"is {n_values} values, above {MAX_VALUES}; lower one of them")
        # The same call the trainer makes, so stimulus k of the responses is image k of its set.
        images = load_regularization_set(cfg.regularizer, cfg.data).images
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    r = simulate_v1_responses(images, a.neurons, a.repeats, mean_rate=a.rate, seed=a.seed)
    try:
        atomic_write(out, lambda f: np.save(f, r, allow_pickle=False))
    except OSError as e:
        print(f"error: --out {out}: not written ({e.strerror or e}); any earlier file is untouched", file=sys.stderr)
        return 2
    print(
        f"wrote {out}: responses {r.shape} (repeats x stimuli x neurons) for the regularization set of "
        f"{cfg.regularizer.data.name if cfg.regularizer.data else cfg.data.name} (n={cfg.regularizer.n}); "
        f"use it with the same config and regularizer.target=neural, regularizer.neural_responses={out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
