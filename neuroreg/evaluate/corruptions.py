"""The 15 common corruptions of CIFAR-10-C at 5 severities, generated from the test set.

A port of Hendrycks & Dietterich's ``make_cifar_c.py`` (CIFAR parameters) to numpy,
scipy and PIL, batched over images, deterministic for a seed. Where the original needs
something no package here ships, a substitute is used and named:

- motion blur (and the streaks of snow) used ImageMagick's ``MotionBlurImage``; here a
  one-sided line kernel with Gaussian weights ``exp(-i^2 / (2 sigma^2))`` for
  ``i = 0 ... radius`` pixels along the random angle, sampled bilinearly
  (torch ``grid_sample``), which is what ImageMagick's kernel does;
- frost blended photographs of frost (files of the original repository); here a
  synthetic frost texture: a fine plasma fractal (diamond-square, as in fog) plus thin
  random crystal streaks, tinted pale blue, blended with the same coefficients;
- OpenCV / scikit-image filters are replaced by their scipy.ndimage equivalents
  (border modes matched: cv2 BORDER_REFLECT_101 = scipy 'mirror').

Images are uint8 N x C x H x W with C = 1 or 3 and come back the same. Colour
operations on one channel treat it as grey (HSV value = the pixel). For a grayscale
model of an RGB source corrupt the RGB images, then convert (``corrupt_images`` does
this with ``to_gray=True``).

Frequency groups (Li et al. 2023, Fig. 2c; their Table A is not in the sources here,
so the grouping follows the spectra of the corruptions as in Yin et al. 2019): noise,
pixelate and JPEG add high frequencies; blurs and elastic warps act on middle
frequencies; weather and photometric changes (snow, frost, fog, brightness, contrast)
are low frequency.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from torch import Tensor, nn

from neuroreg.evaluate.common import progress, subset_index
from neuroreg.evaluate.suite import SuiteContext, SuiteOutput, register_suite
from neuroreg.images import ImageData, to_float, to_grayscale

if TYPE_CHECKING:
    from neuroreg.config import RunConfig

Array = np.ndarray

# --- helpers ---------------------------------------------------------------------------------


def _gaussian(x: Array, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> Array:
    """skimage.filters.gaussian over the spatial axes of N x H x W x C (default mode 'nearest')."""
    return ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode=mode, truncate=truncate)


def _gaussian_kernel(ksize: int, sigma: float) -> Array:
    """cv2.getGaussianKernel as a 2-D kernel."""
    r = np.arange(ksize) - (ksize - 1) / 2
    k = np.exp(-(r**2) / (2 * sigma**2))
    k /= k.sum()
    return np.outer(k, k)


def _disk(radius: float, alias_blur: float) -> Array:
    if radius <= 8:
        L = np.arange(-8, 8 + 1)
        ksize = 3
    else:
        L = np.arange(-radius, radius + 1)
        ksize = 5
    X, Y = np.meshgrid(L, L)
    d = np.array((X**2 + Y**2) <= radius**2, dtype=np.float32)
    d /= d.sum()
    return ndimage.correlate(d, _gaussian_kernel(ksize, alias_blur), mode="mirror")


def _filter2d(x: Array, kernel: Array) -> Array:
    """cv2.filter2D (correlation, BORDER_REFLECT_101) over N x H x W x C."""
    return ndimage.correlate(x, kernel[None, :, :, None], mode="mirror")


def _clipped_zoom(x: Array, zoom_factor: float) -> Array:
    """Zoom the centre of N x H x W x C by zoom_factor, cropped back to H x W.

    scipy.ndimage.zoom(order=1) maps output to input coordinates like torch's bilinear
    interpolation with align_corners=True; torch does it for the whole batch at once.
    """
    h = x.shape[1]
    ch = int(np.ceil(h / zoom_factor))
    top = (h - ch) // 2
    crop = torch.from_numpy(np.ascontiguousarray(x[:, top : top + ch, top : top + ch])).permute(0, 3, 1, 2)
    size = round(ch * zoom_factor)
    z = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=True)
    z = z.permute(0, 2, 3, 1).numpy()
    trim = (z.shape[1] - h) // 2
    return z[:, trim : trim + h, trim : trim + h]


def _plasma_fractal(rng: np.random.Generator, mapsize: int = 32, wibbledecay: float = 3) -> Array:
    """Diamond-square height map in [0, 1] (mapsize a power of two), as in the original."""
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize = mapsize
    wibble = 100.0

    def wibbledmean(array: Array) -> Array:
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        corner = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        sq = corner + np.roll(corner, shift=-1, axis=0)
        sq = sq + np.roll(sq, shift=-1, axis=1)
        maparray[stepsize // 2 : mapsize : stepsize, stepsize // 2 : mapsize : stepsize] = wibbledmean(sq)
        dr = maparray[stepsize // 2 : mapsize : stepsize, stepsize // 2 : mapsize : stepsize]
        ul = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        lt = dr + np.roll(dr, 1, axis=0) + ul + np.roll(ul, -1, axis=1)
        maparray[0:mapsize:stepsize, stepsize // 2 : mapsize : stepsize] = wibbledmean(lt)
        tt = dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=0)
        maparray[stepsize // 2 : mapsize : stepsize, 0:mapsize:stepsize] = wibbledmean(tt)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def _pow2(n: int) -> int:
    return 1 << max(1, (n - 1).bit_length())


def _motion_blur(x: Array, radius: int, sigma: float, angles_deg: Array) -> Array:
    """Substitute for ImageMagick MotionBlurImage: one-sided Gaussian line kernel per image angle.

    Each tap is a bilinear sample of the image shifted k pixels back along the angle
    (torch grid_sample, border = nearest pixel), all images of the batch at once.
    """
    n, h, w, _ = x.shape
    i = np.arange(radius + 1, dtype=np.float64)
    weights = np.exp(-(i**2) / (2 * sigma**2))
    weights /= weights.sum()
    a = torch.from_numpy(np.deg2rad(angles_deg))
    img = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).double()
    out = torch.zeros_like(img)
    for k, wk in zip(i, weights, strict=True):
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = 1
        theta[:, 1, 1] = 1
        # ImageMagick samples the pixels behind along the direction (x = cos, y = sin).
        theta[:, 0, 2] = -2 * k * torch.cos(a) / max(w - 1, 1)
        theta[:, 1, 2] = -2 * k * torch.sin(a) / max(h - 1, 1)
        grid = F.affine_grid(theta, list(img.shape), align_corners=True)
        out += wk * F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.permute(0, 2, 3, 1).numpy()


def _rgb_to_gray(x: Array) -> Array:
    """cv2.COLOR_RGB2GRAY weights; a single channel is already grey."""
    if x.shape[3] == 1:
        return x[..., 0]
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def _per_image_pil(x8: Array, fn: Callable[[Image.Image], Image.Image]) -> Array:
    out = np.empty_like(x8)
    for j in range(len(x8)):
        img = Image.fromarray(x8[j, :, :, 0] if x8.shape[3] == 1 else x8[j])
        res = np.asarray(fn(img), dtype=np.uint8)
        out[j] = res[..., None] if res.ndim == 2 else res
    return out


# --- the corruptions (x: float N x H x W x C in [0, 1]; returns floats in [0, 1]) -----------


def gaussian_noise(x: Array, s: int, rng: np.random.Generator) -> Array:
    c = [0.04, 0.06, 0.08, 0.09, 0.10][s - 1]
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1)


def shot_noise(x: Array, s: int, rng: np.random.Generator) -> Array:
    c = [500, 250, 100, 75, 50][s - 1]
    return np.clip(rng.poisson(x * c) / c, 0, 1)


def impulse_noise(x: Array, s: int, rng: np.random.Generator) -> Array:
    # skimage.util.random_noise(mode='s&p'): each value flips with prob. amount, half to 0, half to 1.
    c = [0.01, 0.02, 0.03, 0.05, 0.07][s - 1]
    flip = rng.random(x.shape) < c
    salt = rng.random(x.shape) < 0.5
    out = x.copy()
    out[flip & salt] = 1.0
    out[flip & ~salt] = 0.0
    return out


def defocus_blur(x: Array, s: int, rng: np.random.Generator) -> Array:
    c = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][s - 1]
    return np.clip(_filter2d(x, _disk(c[0], c[1])), 0, 1)


def glass_blur(x: Array, s: int, rng: np.random.Generator) -> Array:
    sigma, delta, iterations = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][s - 1]
    n, h, w, _ = x.shape
    y = np.uint8(_gaussian(x, sigma) * 255)
    rows = np.arange(n)
    # Local pixel shuffle of the original, done for all images of the batch at once.
    for _ in range(iterations):
        for hh in range(h - delta, delta, -1):
            for ww in range(w - delta, delta, -1):
                d = rng.integers(-delta, delta, size=(n, 2))
                hp, wp = hh + d[:, 1], ww + d[:, 0]
                a = y[rows, hh, ww].copy()
                y[rows, hh, ww] = y[rows, hp, wp]
                y[rows, hp, wp] = a
    return np.clip(_gaussian(y / 255.0, sigma), 0, 1)


def motion_blur(x: Array, s: int, rng: np.random.Generator) -> Array:
    radius, sigma = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)][s - 1]
    angles = rng.uniform(-45, 45, size=len(x))
    # The original round-trips through PNG (uint8) before and after ImageMagick.
    x8 = np.round(x * 255) / 255
    return np.clip(np.round(_motion_blur(x8, radius, sigma, angles) * 255) / 255, 0, 1)


def zoom_blur(x: Array, s: int, rng: np.random.Generator) -> Array:
    c = [np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
         np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01)][s - 1]
    x = x.astype(np.float32)
    out = np.zeros_like(x)
    for z in c:
        out += _clipped_zoom(x, z)
    return np.clip((x + out) / (len(c) + 1), 0, 1)


def snow(x: Array, s: int, rng: np.random.Generator) -> Array:
    c = [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
         (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)][s - 1]
    n, h, w, _ = x.shape
    layer = rng.normal(size=(n, h, w, 1), loc=c[0], scale=c[1])
    layer = _clipped_zoom(layer, c[2])
    layer[layer < c[3]] = 0
    layer = np.round(np.clip(layer, 0, 1) * 255) / 255  # the original's PNG round trip
    angles = rng.uniform(-135, -45, size=n)
    layer = np.round(_motion_blur(layer, c[4], c[5], angles) * 255) / 255
    gray = _rgb_to_gray(x)[..., None]
    x = c[6] * x + (1 - c[6]) * np.maximum(x, gray * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2, axes=(1, 2)), 0, 1)


def _frost_texture(rng: np.random.Generator, h: int, w: int) -> Array:
    """Synthetic frost (the original blends photos): fine fractal + thin crystal streaks, in [0, 1]."""
    size = _pow2(max(h, w))
    base = _plasma_fractal(rng, size, wibbledecay=1.6)[:h, :w]
    streaks = np.zeros((h, w))
    for _ in range(max(2, (h * w) // 128)):
        r0, c0 = rng.uniform(0, h), rng.uniform(0, w)
        ang, length = rng.uniform(0, np.pi), rng.uniform(2, max(3, h / 4))
        t = np.linspace(0, length, int(length * 2) + 2)
        rr = np.clip((r0 + t * np.sin(ang)).astype(int), 0, h - 1)
        cc = np.clip((c0 + t * np.cos(ang)).astype(int), 0, w - 1)
        streaks[rr, cc] = 1.0
    streaks = ndimage.gaussian_filter(streaks, 0.5)
    tex = np.clip(0.55 * base + 0.8 * streaks / max(streaks.max(), 1e-6), 0, 1)
    return 0.3 + 0.7 * tex


def frost(x: Array, s: int, rng: np.random.Generator) -> Array:
    c = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)][s - 1]
    n, h, w, ch = x.shape
    tint = np.array([0.85, 0.93, 1.0]) if ch == 3 else np.array([0.93])
    tex = np.stack([_frost_texture(rng, h, w) for _ in range(n)])[..., None] * tint
    return np.clip(c[0] * x + c[1] * tex, 0, 1)


def fog(x: Array, s: int, rng: np.random.Generator) -> Array:
    c = [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][s - 1]
    n, h, w, _ = x.shape
    size = _pow2(max(h, w))
    max_val = x.max(axis=(1, 2, 3), keepdims=True)
    layer = np.stack([_plasma_fractal(rng, size, c[1])[:h, :w] for _ in range(n)])[..., None]
    return np.clip((x + c[0] * layer) * max_val / (max_val + c[0]), 0, 1)


def brightness(x: Array, s: int, rng: np.random.Generator) -> Array:
    # HSV value + c with hue and saturation kept = scaling RGB by V' / V (grey c where V = 0).
    c = [0.05, 0.1, 0.15, 0.2, 0.3][s - 1]
    v = x.max(axis=3, keepdims=True)
    v_new = np.clip(v + c, 0, 1)
    out = np.where(v > 0, x * v_new / np.maximum(v, 1e-12), v_new)
    return np.clip(out, 0, 1)


def contrast(x: Array, s: int, rng: np.random.Generator) -> Array:
    c = [0.75, 0.5, 0.4, 0.3, 0.15][s - 1]
    means = x.mean(axis=(1, 2), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1)


def elastic_transform(x: Array, s: int, rng: np.random.Generator) -> Array:
    n, h, w, ch = x.shape
    size = h
    c = [(size * 0, size * 0, size * 0.08), (size * 0.05, size * 0.2, size * 0.07),
         (size * 0.08, size * 0.06, size * 0.06), (size * 0.1, size * 0.04, size * 0.05),
         (size * 0.1, size * 0.03, size * 0.03)][s - 1]
    out = np.empty_like(x, dtype=np.float64)
    center = np.float32([w, h]) // 2
    sq = min(h, w) // 3
    pts1 = np.float32([center + sq, [center[0] + sq, center[1] - sq], center - sq])  # (x, y) as cv2
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    for j in range(n):
        pts2 = pts1 + rng.uniform(-c[2], c[2], size=pts1.shape).astype(np.float32)
        # cv2.getAffineTransform(pts1, pts2) + warpAffine: dst(p) = src(M^-1 p), border reflect-101.
        A = np.hstack([pts1, np.ones((3, 1), np.float32)]).astype(np.float64)
        M = np.linalg.solve(A, pts2.astype(np.float64)).T  # 2 x 3, maps src (x, y) -> dst
        Minv = np.linalg.inv(np.vstack([M, [0, 0, 1]]))[:2]
        src_x = Minv[0, 0] * cols + Minv[0, 1] * rows + Minv[0, 2]
        src_y = Minv[1, 0] * cols + Minv[1, 1] * rows + Minv[1, 2]
        img = np.stack([ndimage.map_coordinates(x[j, :, :, k], [src_y, src_x], order=1, mode="mirror")
                        for k in range(ch)], axis=-1)
        dx = ndimage.gaussian_filter(rng.uniform(-1, 1, size=(h, w)), c[1], mode="reflect", truncate=3) * c[0]
        dy = ndimage.gaussian_filter(rng.uniform(-1, 1, size=(h, w)), c[1], mode="reflect", truncate=3) * c[0]
        out[j] = np.stack([ndimage.map_coordinates(img[:, :, k], [rows + dy, cols + dx], order=1, mode="reflect")
                           for k in range(ch)], axis=-1)
    return np.clip(out, 0, 1)


def pixelate(x: Array, s: int, rng: np.random.Generator) -> Array:
    c = [0.95, 0.9, 0.85, 0.75, 0.65][s - 1]
    h, w = x.shape[1:3]
    x8 = np.uint8(np.round(x * 255))
    small = (int(w * c), int(h * c))
    return _per_image_pil(x8, lambda im: im.resize(small, Image.BOX).resize((w, h), Image.BOX)) / 255.0


def jpeg_compression(x: Array, s: int, rng: np.random.Generator) -> Array:
    q = [80, 65, 58, 50, 40][s - 1]

    def jpeg(im: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=q)
        buf.seek(0)
        return Image.open(buf).convert(im.mode)

    return _per_image_pil(np.uint8(np.round(x * 255)), jpeg) / 255.0


CORRUPTIONS: dict[str, Callable[[Array, int, np.random.Generator], Array]] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "frost": frost,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}

FREQUENCY: dict[str, str] = {
    "gaussian_noise": "high", "shot_noise": "high", "impulse_noise": "high",
    "pixelate": "high", "jpeg_compression": "high",
    "defocus_blur": "mid", "glass_blur": "mid", "motion_blur": "mid", "zoom_blur": "mid",
    "elastic_transform": "mid",
    "snow": "low", "frost": "low", "fog": "low", "brightness": "low", "contrast": "low",
}


def corrupt(images: Tensor, name: str, severity: int, seed: int = 0, to_gray: bool = False) -> Tensor:
    """Corrupted copy of uint8 N x C x H x W images (uint8, same shape unless ``to_gray``).

    Deterministic given (images, name, severity, seed). ``to_gray`` averages the colour
    channels afterwards (neuroreg.images.to_grayscale), for grayscale models of RGB data.
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {sorted(CORRUPTIONS)}")
    if severity not in (1, 2, 3, 4, 5):
        raise ValueError(f"severity must be 1 ... 5, got {severity}")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be uint8 N x C x H x W, got {images.dtype} {tuple(images.shape)}")
    rng = np.random.default_rng([seed, list(CORRUPTIONS).index(name), severity])
    x = images.permute(0, 2, 3, 1).numpy().astype(np.float64) / 255.0
    y = CORRUPTIONS[name](x, severity, rng)
    # np.uint8 truncation as in the original's final np.uint8(corruption(img)).
    out = torch.from_numpy(np.uint8(np.clip(y * 255, 0, 255))).permute(0, 3, 1, 2).contiguous()
    if to_gray and out.shape[1] != 1:
        out = to_grayscale(out)
    return out


# --- the corruptions suite -----------------------------------------------------------------


def corruption_accuracy(
    model: nn.Module,
    cfg: RunConfig,
    test: ImageData,
    test_rgb: ImageData | None = None,
    device: torch.device | str = "cpu",
) -> list[dict]:
    """Records ``{corruption, severity, frequency, accuracy, n}`` over the corruption subset."""
    ev = cfg.evaluation
    idx = subset_index(len(test), ev.corruption_n_images, ev.seed)
    source = test_rgb if test_rgb is not None else test
    images = source.images[idx]
    to_gray = test_rgb is not None and test.images.shape[1] == 1 and images.shape[1] == 3
    y = test.labels[idx]
    names = ev.corruptions or list(CORRUPTIONS)
    jobs = [(c, s) for c in names for s in ev.severities]
    records = []
    chunk = 500  # bounds memory of the float64 intermediates; results do not depend on it per seed
    for name, sev in progress(jobs, "corruptions", enabled=ev.progress):
        correct = 0
        for b in range(0, len(images), chunk):
            xc = corrupt(images[b : b + chunk], name, sev, seed=ev.seed + b, to_gray=to_gray)
            pred = []
            with torch.no_grad():
                for k in range(0, len(xc), ev.batch_size):
                    pred.append(model(to_float(xc[k : k + ev.batch_size]).to(device)).argmax(1).cpu())
            correct += int((torch.cat(pred) == y[b : b + chunk]).sum())
        records.append({"corruption": name, "severity": sev, "frequency": FREQUENCY[name],
                        "accuracy": correct / max(len(images), 1), "n": len(images)})
    return records


def _metrics(cfg: RunConfig) -> set[str]:
    ev = cfg.evaluation
    names = list(ev.corruptions) if ev.corruptions else list(CORRUPTIONS)
    out = {f"corruption_acc_{n}_{s}" for n in names for s in ev.severities}
    out |= {f"corruption_acc_{n}" for n in names} | {f"corruption_acc_{FREQUENCY[n]}" for n in names}
    return out | {"corruption_acc_mean"}


@register_suite("corruptions", metrics=_metrics)
def run_suite(ctx: SuiteContext) -> SuiteOutput:
    """Accuracy under the 15 common corruptions at 5 severities (CIFAR-10-C style)."""
    summary: dict[str, object] = {}
    test_rgb = ctx.test_rgb
    if test_rgb is None and ctx.load_rgb is not None:
        test_rgb, summary["corruptions_source"] = ctx.load_rgb()
    recs = corruption_accuracy(ctx.model, ctx.cfg, ctx.test, test_rgb, ctx.device)
    ctx.shared["corruptions"] = recs
    by_group: dict[str, list[float]] = {}
    by_name: dict[str, list[float]] = {}
    for r in recs:
        summary[f"corruption_acc_{r['corruption']}_{r['severity']}"] = r["accuracy"]
        by_name.setdefault(r["corruption"], []).append(r["accuracy"])
    for name, accs in by_name.items():
        summary[f"corruption_acc_{name}"] = sum(accs) / len(accs)
        by_group.setdefault(FREQUENCY[name], []).append(sum(accs) / len(accs))
    for g, accs in by_group.items():
        summary[f"corruption_acc_{g}"] = sum(accs) / len(accs)
    all_acc = [r["accuracy"] for r in recs]
    summary["corruption_acc_mean"] = sum(all_acc) / len(all_acc) if all_acc else math.nan
    return SuiteOutput({"corruptions": recs}, summary)

