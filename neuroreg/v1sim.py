"""A simulated V1-like population, for tests and demos of the neural target without recordings.

Each neuron is a complex cell of a Gabor energy model (random position, orientation,
spatial frequency, size), its rate a rectified, gained energy; trial responses are Poisson
spike counts, so repeats carry realistic noise and the SNR weights of the neural target
are meaningful. Output format = the neural target's input: repeats x stimuli x neurons.

    python -m neuroreg.v1sim --data digits --n 500 --out responses.npy
"""

from __future__ import annotations

import argparse
import math

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


def main(argv: list[str] | None = None) -> None:
    from neuroreg.config import ConfigError, DataConfig, RegularizerConfig
    from neuroreg.data import load_regularization_set

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="digits", help="data set name of the regularization set")
    p.add_argument("--root", default=None, help="data root (or $NEUROREG_DATA_ROOT)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--n", type=int, default=500, help="regularization set size (regularizer.n)")
    p.add_argument("--seed", type=int, default=0, help="regularizer.seed (which images, in which order)")
    p.add_argument("--neurons", type=int, default=200)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    data = DataConfig(name=a.data, root=a.root, image_size=a.image_size)
    reg = RegularizerConfig(n=a.n, seed=a.seed)
    try:
        images = load_regularization_set(reg, data).images
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from e
    r = simulate_v1_responses(images, a.neurons, a.repeats, seed=a.seed)
    np.save(a.out, r)
    print(f"wrote {a.out}: responses {r.shape} (repeats x stimuli x neurons) for {a.data}, n={a.n}, seed={a.seed}")


if __name__ == "__main__":
    main()
