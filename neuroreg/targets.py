"""Similarity targets S_target (METHOD.md section 1).

A target answers ``pairs(i, j)`` for index tensors into the regularization set. Targets
built from images keep only N x D unit vectors and compute pair values on the fly, so
N = 50,000 fits in memory; an N x N matrix exists only where the user hands one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from neuroreg.batch_targets import (  # noqa: F401 (shared pairing's targets, re-exported)
    BatchTarget,
    ImageBatchTarget,
    PixelIndexTarget,
    SharedImages,
    ShuffledBatchTarget,
    grey_vectors,
    pixel_mean,
)
from neuroreg.errors import ConfigError
from neuroreg.images import to_float
from neuroreg.precision import ieee_fp32
from neuroreg.registry import Registry
from neuroreg.safe_io import check_regular, load_npy, npy_info
from neuroreg.target_kinds import (  # noqa: F401 (the target kinds, re-exported for callers)
    CosineTarget,
    MatrixTarget,
    ShuffleTarget,
    Target,
    ThresholdTarget,
    centred_unit_rows,
    pixel_unit_vectors,
)

if TYPE_CHECKING:
    from neuroreg.config import RegularizerConfig


def snr_weights(responses: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Per-neuron signal-to-noise weights from repeats x stimuli x neurons responses.

    signal = variance over stimuli of the mean over repeats; noise = mean over stimuli of
    the variance over repeats (both unbiased, ddof = 1); weight = signal / noise. Neurons
    that never vary get weight 0; a noise of 0 with signal is floored at 1e-12.
    """
    r = torch.as_tensor(np.asarray(responses), dtype=torch.float64)
    if r.dim() != 3 or r.shape[0] < 2:
        raise ValueError("snr_weights needs repeats x stimuli x neurons with >= 2 repeats")
    signal = r.mean(dim=0).var(dim=0, unbiased=True)
    noise = r.var(dim=0, unbiased=True).mean(dim=0)
    w = signal / noise.clamp_min(1e-12)
    return torch.where(signal > 0, w, torch.zeros_like(w))


def neural_unit_vectors(responses: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Stimuli x neurons (or repeats x stimuli x neurons) -> N x D unit vectors (Li et al.)."""
    r = torch.as_tensor(np.asarray(responses), dtype=torch.float64)
    if r.dim() == 3:
        w = snr_weights(r)
        r = r.mean(dim=0) * w
    elif r.dim() != 2:
        raise ValueError("responses must be stimuli x neurons or repeats x stimuli x neurons")
    return centred_unit_rows(r)


def check_matrix(m: np.ndarray, n: int, field: str) -> torch.Tensor:
    """A user's N x N target: square, symmetric, finite, within [-1, 1], of size n."""
    m = np.asarray(m)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ConfigError(field, f"the target matrix must be square N x N, got shape {m.shape}")
    if m.shape[0] != n:
        raise ConfigError(
            field,
            f"the target matrix is {m.shape[0]} x {m.shape[0]} but the regularization set has "
            f"{n} images; set regularizer.n = {m.shape[0]} or supply a matching matrix",
        )
    if not np.all(np.isfinite(m)):
        raise ConfigError(field, "the target matrix holds NaN or infinite values")
    if np.abs(m).max() > 1 + 1e-6:
        raise ConfigError(field, f"target values must lie in [-1, 1]; max |value| is {np.abs(m).max():.4g}")
    asym = np.abs(m - m.T).max()
    if asym > 1e-6:
        raise ConfigError(field, f"the target matrix is not symmetric (max |S - S^T| = {asym:.3g})")
    return torch.as_tensor(np.clip(m, -1, 1), dtype=torch.float32)


def _load_npy(path: str, field: str, ndims: tuple[int, ...]) -> np.ndarray:
    # Header first, never allow_pickle: a user-supplied .npy must never run code or exhaust memory.
    return load_npy(path, field, ndims=ndims)


VALUES_CHECKED_UP_FRONT = 64 << 20
"""Recordings up to this size have their values checked with the config, before any work;
larger ones when the target is built."""


def check_responses_shape(shape: tuple[int, ...], n: int | None, path: str) -> None:
    """Recorded responses: stimuli x neurons or repeats (>= 2) x stimuli x neurons, >= 1 neuron,
    and (``n`` given) one stimulus per image of the regularization set."""
    field = "regularizer.neural_responses"
    if len(shape) == 3 and shape[0] < 2:
        raise ConfigError(field, f"{path} has {shape[0]} repeat(s) (shape {shape}); SNR weighting needs >= 2 "
                                 "repeats, or give the trial-averaged responses as stimuli x neurons")
    if shape[-1] < 1:
        raise ConfigError(field, f"{path} has no neurons (shape {shape})")
    stimuli = shape[-2]
    if n is not None and stimuli != n:
        raise ConfigError(
            field,
            f"responses of shape {shape} in {path} do not match the regularization set of {n} images "
            "(expected stimuli x neurons or repeats x stimuli x neurons, stimuli in the "
            "order of the regularization set); set regularizer.n accordingly",
        )


def check_responses(r: np.ndarray, n: int, path: str) -> np.ndarray:
    """The values of recorded responses: finite, and some neuron varying across stimuli."""
    field = "regularizer.neural_responses"
    check_responses_shape(r.shape, n, path)
    r = r.astype(np.float64, copy=False)
    if not np.all(np.isfinite(r)):
        raise ConfigError(field, f"{path} holds NaN or infinite values ({int((~np.isfinite(r)).sum())} of {r.size})")
    mean = r.mean(axis=0) if r.ndim == 3 else r
    if not np.any(mean.std(axis=0) > 0):
        raise ConfigError(field, f"{path}: no neuron's response varies across stimuli, so the target would be "
                                 "all zero; check the recording")
    return r


# --- features target ----------------------------------------------------------------


def feature_embedder(
    weights: str, arch: str, layer: str, device: torch.device | str = "cpu",
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A frozen torchvision network's layer, weights from a user file, as a function of
    [0, 1] float images (N x 1 or 3 x H x W, on ``device``) -> N x D features, computed without
    gradient in IEEE fp32 (no TF32: the target is data, the same on every device)."""
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    try:
        net = getattr(torchvision.models, arch)(weights=None)
    except AttributeError as e:
        raise ConfigError("regularizer.features_arch", f"torchvision has no model {arch!r}") from e
    check_regular(weights, "regularizer.features_weights", "state_dict file")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file: name it, never a traceback
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            why = "it holds Python objects beyond tensors (refused unread: loading it could run code)"
        raise ConfigError("regularizer.features_weights", f"{weights} is not a readable state_dict "
                                                          f"(torch.save of tensors): {why}") from None
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ConfigError("regularizer.features_weights", f"weights do not fit {arch}: {e}") from e
    net.to(device).eval()
    try:
        extractor = create_feature_extractor(net, return_nodes={layer: "out"})
    except Exception as e:  # torchvision raises ValueError with the list of valid names
        raise ConfigError("regularizer.features_layer", str(e).splitlines()[0]) from e
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    def embed(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), ieee_fp32():  # autocast: off in the caller (ImageBatchTarget.batch_pairs)
            x = x.float()
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            return extractor((x - mean) / std)["out"].flatten(1).float()

    return embed


def _embed_all(embed: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, device: torch.device | str,
               batch_size: int = 256) -> torch.Tensor:
    """``embed`` of uint8 images, in batches on ``device``."""
    return torch.cat([embed(to_float(images[s : s + batch_size].to(device))) for s in range(0, images.shape[0], batch_size)])


def feature_unit_vectors(
    images: torch.Tensor, weights: str, arch: str, layer: str, batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Unit vectors of a frozen torchvision network's layer, weights from a user file.

    The network runs on ``device`` (the trainer's: a GPU trial must not spend minutes on
    the CPU here), in IEEE fp32; the unit vectors come back on ``device``.
    """
    return centred_unit_rows(_embed_all(feature_embedder(weights, arch, layer, device), images, device, batch_size))


# --- pairing: shared: targets of the classification batch's own images ---------------------


@dataclass(frozen=True)
class TargetSpec:
    name: str
    build: Callable[[RegularizerConfig, torch.Tensor], Target] | None
    """Builds the target over the regularization images; None for the baseline ("none")."""
    params: tuple[str, ...] = ()
    """The ``regularizer.*`` fields this target reads beyond alpha, n, seed and layers."""
    check: Callable[[RegularizerConfig, bool], None] | None = None
    """Validates those fields (``check_files``: also that named files exist)."""
    shuffleable: bool = True
    """May be the target whose values ``shuffle`` permutes."""
    paths: tuple[str, ...] = ()
    """Those of ``params`` that name files: made absolute for Ray trials, checked on every node."""
    takes_device: bool = False
    """``build`` takes a ``device`` keyword (it computes there, e.g. a frozen network)."""
    shared: Callable[[RegularizerConfig, SharedImages, torch.device | str], BatchTarget] | None = None
    """Builds the target of ``pairing: shared`` (values of the classification batch's own
    images); None: the target exists only for the regularization set's N images (neural)."""
    indexed: Callable[[RegularizerConfig, SharedImages], Target] | None = None
    """A per-index target over all training images: what ``shuffle`` permutes under shared."""

    def make(self, cfg: RegularizerConfig, reg_images: torch.Tensor, device: torch.device | str) -> Target:
        """The built target, on ``device``."""
        assert self.build is not None
        target = self.build(cfg, reg_images, device=device) if self.takes_device else self.build(cfg, reg_images)
        return target.to(device)


TARGETS: Registry[TargetSpec] = Registry("target")


def register_target(
    name: str,
    params: tuple[str, ...] = (),
    check: Callable[[RegularizerConfig, bool], None] | None = None,
    shuffleable: bool = True,
    paths: tuple[str, ...] = (),
    takes_device: bool = False,
    shared: Callable[[RegularizerConfig, SharedImages, torch.device | str], BatchTarget] | None = None,
    indexed: Callable[[RegularizerConfig, SharedImages], Target] | None = None,
) -> Callable:
    """Decorator: register ``build(cfg, reg_images) -> Target`` as the target ``name``
    (``build(cfg, reg_images, device=...)`` with ``takes_device``); ``shared`` and
    ``indexed``: see TargetSpec."""

    def wrap(build: Callable[..., Target] | None):
        TARGETS.add(name, TargetSpec(name, build, params, check, shuffleable, paths, takes_device, shared, indexed))
        return build

    return wrap


def target_kind(target: str, shuffle_of: str | None) -> str:
    """The target whose values are used: the shuffled one for ``shuffle``."""
    return shuffle_of if target == "shuffle" and shuffle_of else target


def target_params(target: str, shuffle_of: str | None = None) -> tuple[str, ...]:
    """Every ``regularizer.*`` field a target reads (a shuffle reads its base's too)."""
    if target not in TARGETS:
        return ()
    own = TARGETS.get(target, "regularizer.target").params
    if target == "shuffle" and shuffle_of in TARGETS and shuffle_of != "shuffle":
        return own + TARGETS.get(shuffle_of, "regularizer.shuffle_of").params
    return own


def validate_target(cfg: RegularizerConfig, check_files: bool) -> None:
    """The target and shuffle_of names, and the fields the used target reads."""
    TARGETS.get(cfg.target, "regularizer.target")
    bases = tuple(t.name for t in TARGETS if t.shuffleable)
    if cfg.shuffle_of not in bases:
        raise ConfigError("regularizer.shuffle_of", f"must name one of {bases}, got {cfg.shuffle_of!r}")
    if cfg.pairing == "shared" and cfg.target != "none":
        validate_shared_pairing(cfg)
    spec = TARGETS.get(target_kind(cfg.target, cfg.shuffle_of), "regularizer.target")
    if cfg.active and spec.check is not None:
        spec.check(cfg, check_files)


def shared_targets() -> tuple[str, ...]:
    """Targets that ``pairing: shared`` can use."""
    return tuple(t.name for t in TARGETS if t.shared is not None)


def validate_shared_pairing(cfg: RegularizerConfig) -> None:
    """``pairing: shared`` takes its pairs from the classification batch: the regularization
    set must be the training set, and the target must have values for any training image."""
    fix = "or use regularizer.pairing: pairs (the papers' recipe) or batch"
    if cfg.data is not None:
        raise ConfigError("regularizer.data", "pairing: shared takes its similarity pairs from the classification "
                                              "batch, so the regularization set is the classification training set; "
                                              f"remove regularizer.data, {fix}, which regularize with another set")
    spec = TARGETS.get(cfg.target, "regularizer.target")
    if spec.shared is None:
        raise ConfigError("regularizer.pairing", f"pairing: shared needs target values for the images of each "
                                                 f"classification batch, and target {cfg.target!r} has values only for "
                                                 f"the N regularization images it was given; use a target of "
                                                 f"{shared_targets()}, {fix}")
    if cfg.target == "shuffle":
        base = TARGETS.get(cfg.shuffle_of, "regularizer.shuffle_of")
        if base.indexed is None:
            shufflable = tuple(t.name for t in TARGETS if t.indexed is not None)
            raise ConfigError("regularizer.shuffle_of", f"under pairing: shared the shuffle assigns each batch pair the "
                                                        f"value of another pair of training images, which {cfg.shuffle_of!r} "
                                                        f"would have to compute every step for up to twice the pairs' "
                                                        f"images; shuffle one of {shufflable} under shared, {fix}")


def build_shared_target(cfg: RegularizerConfig, src: SharedImages, device: torch.device | str = "cpu") -> BatchTarget | None:
    """The target of ``pairing: shared`` (values computed from the classification batch), on ``device``."""
    if not cfg.active:
        return None
    validate_shared_pairing(cfg)
    return TARGETS.get(cfg.target, "regularizer.target").shared(cfg, src, device).to(device)


def build_target(
    cfg: RegularizerConfig, reg_images: torch.Tensor, device: torch.device | str = "cpu"
) -> Target | None:
    """The target of ``cfg`` over the regularization images (uint8 N x C x H x W), on ``device``."""
    if not cfg.active:
        return None
    spec = TARGETS.get(cfg.target, "regularizer.target")
    return spec.make(cfg, reg_images, device) if spec.build is not None else None


def _existing_file(path: str, name: str) -> None:
    if not Path(path).exists() and not Path(path).is_symlink():
        raise ConfigError(name, f"file {path} does not exist")
    check_regular(path, name)  # a folder, FIFO, device or socket is named as such


register_target("none", shuffleable=False)(None)


def _pixel_shared(cfg: RegularizerConfig, src: SharedImages, device: torch.device | str) -> BatchTarget:
    return ImageBatchTarget(grey_vectors, pixel_mean(src.reg_images()))


def _pixel_th_shared(cfg: RegularizerConfig, src: SharedImages, device: torch.device | str) -> BatchTarget:
    return ImageBatchTarget(grey_vectors, pixel_mean(src.reg_images()), cfg.th)


def _pixel_indexed(cfg: RegularizerConfig, src: SharedImages) -> Target:
    return PixelIndexTarget(src.train, pixel_mean(src.reg_images()))


def _pixel_th_indexed(cfg: RegularizerConfig, src: SharedImages) -> Target:
    return ThresholdTarget(_pixel_indexed(cfg, src), cfg.th)


@register_target("pixel", shared=_pixel_shared, indexed=_pixel_indexed)
def _pixel(cfg: RegularizerConfig, reg_images: torch.Tensor) -> Target:
    return CosineTarget(pixel_unit_vectors(reg_images))


@register_target("pixel_th", params=("th",), shared=_pixel_th_shared, indexed=_pixel_th_indexed)
def _pixel_th(cfg: RegularizerConfig, reg_images: torch.Tensor) -> Target:
    return ThresholdTarget(CosineTarget(pixel_unit_vectors(reg_images)), cfg.th)


def _check_neural(cfg: RegularizerConfig, check_files: bool) -> None:
    if (cfg.neural_responses is None) == (cfg.neural_matrix is None):
        raise ConfigError(
            "regularizer.neural_responses",
            "the neural target needs exactly one of neural_responses (.npy responses) "
            "or neural_matrix (.npy N x N)",
        )
    path_field = "neural_responses" if cfg.neural_responses else "neural_matrix"
    if check_files:
        path = getattr(cfg, path_field)
        _existing_file(path, f"regularizer.{path_field}")
        # The header only (no data): dtype, rank, repeats, neurons and stimuli before any work.
        shape, _ = npy_info(path, f"regularizer.{path_field}", ndims=(2, 3) if cfg.neural_responses else (2,))
        if cfg.neural_responses:
            check_responses_shape(shape, cfg.n, path)
            if Path(path).stat().st_size <= VALUES_CHECKED_UP_FRONT:
                check_responses(_load_npy(path, "regularizer.neural_responses", (2, 3)), cfg.n, path)
        elif shape[0] != shape[1] or shape[0] != cfg.n:
            raise ConfigError("regularizer.neural_matrix", f"{path} has shape {shape}; the target matrix must be "
                                                           f"N x N with N = regularizer.n = {cfg.n}")


@register_target("neural", params=("neural_responses", "neural_matrix", "order"), check=_check_neural,
                 paths=("neural_responses", "neural_matrix"))
def _neural(cfg: RegularizerConfig, reg_images: torch.Tensor) -> Target:
    n = reg_images.shape[0]
    if cfg.neural_matrix:
        m = _load_npy(cfg.neural_matrix, "regularizer.neural_matrix", (2,))
        return MatrixTarget(check_matrix(m, n, "regularizer.neural_matrix"))
    r = _load_npy(cfg.neural_responses, "regularizer.neural_responses", (2, 3))
    unit = neural_unit_vectors(check_responses(r, n, cfg.neural_responses))
    if not bool((unit.norm(dim=1) > 0).any()):
        raise ConfigError("regularizer.neural_responses", f"{cfg.neural_responses}: every neuron has SNR weight 0 "
                                                          "(no signal across stimuli beyond the trial noise)")
    return CosineTarget(unit)


def _check_features(cfg: RegularizerConfig, check_files: bool) -> None:
    if not cfg.features_weights:
        raise ConfigError("regularizer.features_weights", "the features target needs a weights file")
    if check_files:
        _existing_file(cfg.features_weights, "regularizer.features_weights")


def _features_shared(cfg: RegularizerConfig, src: SharedImages, device: torch.device | str) -> BatchTarget:
    # The frozen network runs on every batch: the cost of this target under shared is one
    # no-grad forward pass of it per step (pairs mode computes all N vectors once instead).
    embed = feature_embedder(cfg.features_weights, cfg.features_arch, cfg.features_layer, device)
    mean = _embed_all(embed, src.reg_images(), device).double().mean(dim=0).float()
    return ImageBatchTarget(embed, mean)


@register_target("features", params=("features_weights", "features_arch", "features_layer"), check=_check_features,
                 paths=("features_weights",), takes_device=True, shared=_features_shared)
def _features(cfg: RegularizerConfig, reg_images: torch.Tensor, device: torch.device | str = "cpu") -> Target:
    return CosineTarget(feature_unit_vectors(reg_images, cfg.features_weights, cfg.features_arch, cfg.features_layer,
                                             device=device))


def _shuffle_shared(cfg: RegularizerConfig, src: SharedImages, device: torch.device | str) -> BatchTarget:
    base = TARGETS.get(cfg.shuffle_of, "regularizer.shuffle_of").indexed(cfg, src).to(device)
    return ShuffledBatchTarget(ShuffleTarget(base, seed=cfg.seed, device=device).to(device))


@register_target("shuffle", params=("shuffle_of",), shuffleable=False, takes_device=True, shared=_shuffle_shared)
def _shuffle(cfg: RegularizerConfig, reg_images: torch.Tensor, device: torch.device | str = "cpu") -> Target:
    base = TARGETS.get(cfg.shuffle_of, "regularizer.shuffle_of").make(cfg, reg_images, device)
    return ShuffleTarget(base, seed=cfg.seed, device=device)
