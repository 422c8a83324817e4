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


def main(argv: list[str] | None = None) -> int:
    from neuroreg.config import ConfigError, RunConfig, apply_overrides
    from neuroreg.data import load_regularization_set

    p = argparse.ArgumentParser(
        prog="python -m neuroreg.v1sim",
        description="Simulated V1 responses to the regularization set of a run config, in its order.",
    )
    p.add_argument("--config", help="the run config the responses are for (its data and regularizer sections)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field, e.g. regularizer.n=500")
    p.add_argument("--neurons", type=int, default=200)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--seed", type=int, default=0, help="seed of the population and the spike noise")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    try:
        cfg = RunConfig.from_yaml(a.config, a.set) if a.config else RunConfig.from_dict(apply_overrides({}, a.set))
        # The same call the trainer makes, so stimulus k of the responses is image k of its set.
        images = load_regularization_set(cfg.regularizer, cfg.data).images
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    r = simulate_v1_responses(images, a.neurons, a.repeats, seed=a.seed)
    np.save(a.out, r)
    print(
        f"wrote {a.out}: responses {r.shape} (repeats x stimuli x neurons) for the regularization set of "
        f"{cfg.regularizer.data.name if cfg.regularizer.data else cfg.data.name} (n={cfg.regularizer.n}); "
        f"use it with the same config and regularizer.target=neural, regularizer.neural_responses={a.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
