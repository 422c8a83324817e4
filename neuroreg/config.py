"""The run configuration: one typed dataclass tree, validated in one place.

YAML is only a way to write it: ``RunConfig.from_dict(yaml.safe_load(...))``.
Every field has a documented default here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from neuroreg.errors import ConfigError
from neuroreg.evaluate.config import EvalConfig
from neuroreg.limits import check_run_limits
from neuroreg.precision import PRECISIONS
from neuroreg.typed import apply_overrides, build_dataclass, config_with, parse_value, set_dotted

__all__ = [  # the typed builder and the overrides live in neuroreg.typed; importable from here
    "ConfigError", "DataConfig", "EvalConfig", "ModelConfig", "OptimConfig", "RegularizerConfig", "RunConfig",
    "TrainConfig", "apply_overrides", "build_dataclass", "config_with", "data_root", "expand_path", "field_paths",
    "parse_value", "regularizer_active", "set_dotted", "validate_data",
]
from neuroreg.models import available_models, tap_points
from neuroreg.targets import validate_target

PAIRINGS = ("pairs", "batch", "shared")
DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder", "synthetic")


@dataclass
class DataConfig:
    """A data set by name, decoded once into uint8 tensors in memory."""

    name: str = "digits"
    """digits | mnist | fashion_mnist | cifar10 | cifar100 | imagefolder | synthetic."""
    root: str | None = None
    """Data root for torchvision sets, or the folder / .tar(.gz) for imagefolder; ~ and $VARS
    are expanded. Defaults to $NEUROREG_DATA_ROOT; required for everything but digits and synthetic."""
    download: bool = False
    """Let torchvision download the set into root (needs internet)."""
    train_dir: str = "train"
    """imagefolder: sub-folder (inside root or the archive) of the training split."""
    test_dir: str = "test"
    """imagefolder: sub-folder of the test split ('' when there is none)."""
    image_size: int | None = 32
    """Resize to this square size; None keeps the native size."""
    grayscale: bool = True
    """Average colour to one channel (the papers use grayscale CIFAR)."""
    subset: int | None = None
    """Use only this many training images (a fixed random subset); None = all."""
    test_subset: int | None = None
    """Use only this many test images; None = all."""
    val_fraction: float = 0.01
    """Fraction of the training set held out for validation (papers: 1 %)."""
    split_seed: int = 0
    """Seed of the subset and validation split (fixed, independent of the run seed)."""
    augment: bool = False
    """Random crop with reflect padding + horizontal flip on the training batches."""
    crop_padding: int = 4
    """Reflect padding of the random crop."""
    hflip: bool = True
    """Horizontal flip as part of augment (turn off for digits)."""


@dataclass
class ModelConfig:
    name: str = "resnet18"
    """A name in neuroreg.models' registry: resnet18 | resnet34."""
    width: int = 16
    """Channels of the first stage (64 in the papers, 16 for CPU runs)."""
    stem: Literal["3x3", "7x7"] = "3x3"
    """3x3 stride-1 stem (later code) or 7x7 stride-1 stem (reference code); no max-pool."""
    blur_sigma: float = 0.0
    """Fixed Gaussian blur front end in pixels (0 = none; 1.5 is the blur baseline on CIFAR)."""


NULL_MEANS: dict[str, str] = {"regularizer.n_pairs": "all"}
"""What null says in the nullable fields whose null is a setting, not a missing value, for the
labels of reports and plots (n_pairs null: all pairs of the batch)."""


@dataclass
class RegularizerConfig:
    target: str = "none"
    """none | pixel | pixel_th | shuffle | neural | features."""
    alpha: float = 0.0
    """Weight of the similarity loss: L = L_task + alpha * L_sim."""
    th: float = 0.8
    """Threshold of pixel_th, in (0, 1)."""
    shuffle_of: str = "pixel_th"
    """shuffle: the target whose off-diagonal values are permuted."""
    layers: list[str] = field(default_factory=lambda: ["conv1", "conv5", "conv9", "conv13", "conv17"])
    """Tap points whose similarities are mixed with softmax weights."""
    train_layer_weights: bool = True
    """Learn the softmax layer weights (uniform at start); False keeps them uniform."""
    loss: Literal["atanh", "mse"] = "atanh"
    """atanh: (d(S_cnn) - d(S_target))^2 with the soft arctanh d of METHOD.md; mse: (S_cnn - S_target)^2."""
    eps: float = 1e-5
    """eps of the soft arctanh d(x) = log(1 + x + eps) - log(1 - x + eps)."""
    centering: Literal["running", "batch"] = "running"
    """Per-channel mean: running EMA over pair batches (reference code) or this batch's mean."""
    ema_beta: float = 0.9
    """EMA factor of the running mean: mu <- beta * mu + (1 - beta) * batch mean."""
    pairing: Literal["pairs", "batch", "shared"] = "pairs"
    """pairs: n_pairs random pairs of regularization images per step (papers; 2 x n_pairs images
    forwarded); batch: all K(K-1)/2 pairs of batch_k regularization images (K forwarded);
    shared: pairs of the classification batch itself, its tap features taken from the
    classification pass (no image forwarded twice). shared needs the training set as the
    regularization set and a target defined on images (pixel, pixel_th, features, shuffle
    of pixel / pixel_th): its targets are computed from the batch images as the network sees them."""
    n_pairs: int | None = 16
    """pairs: random pairs per step. shared: pairs drawn per step from the batch's B(B-1)/2
    (seeded, without replacement); null = all of them (null is for shared only)."""
    batch_k: int = 32
    data: DataConfig | None = None
    """Regularization set; None = the classification training split."""
    n: int = 5000
    """Size of the regularization set (first n images of a fixed permutation)."""
    seed: int = 0
    """Seed of the regularization subset and of the shuffle permutation."""
    order: Literal["random", "file"] = "random"
    """random: the first n of a fixed permutation (seed); file: the first n in the data set's
    own order (recorded responses must be in the order of the regularization set)."""
    neural_responses: str | None = None
    """neural: .npy of responses, stimuli x neurons or repeats x stimuli x neurons."""
    neural_matrix: str | None = None
    """neural: a ready N x N similarity matrix (.npy)."""
    features_weights: str | None = None
    """features: a state_dict file (torch.save) of a torchvision model."""
    features_arch: str = "vgg19"
    """features: torchvision architecture the weights belong to."""
    features_layer: str = "features.11"
    """features: module name whose output is used (vgg19 conv3_1 + ReLU = features.11)."""

    @property
    def active(self) -> bool:
        return regularizer_active(self.target, self.alpha)


def regularizer_active(target: Any, alpha: Any) -> bool:
    """Whether a run trains with the similarity loss: a target and alpha > 0 (else a baseline)."""
    try:
        return target != "none" and float(alpha) > 0
    except (TypeError, ValueError):
        return False


@dataclass
class OptimConfig:
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["step_cycle", "cosine", "constant"] = "step_cycle"
    """step_cycle: lr * gamma^((epoch // step) % cycle) (papers); cosine over all epochs; constant."""
    step: int = 4
    gamma: float = 0.3
    cycle: int = 5


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda, cuda:N."""
    num_threads: int | None = None
    """torch intra-op threads; None leaves torch's default."""
    max_steps_per_epoch: int | None = None
    """Cap steps per epoch (quick runs, benchmarks); None = a full pass."""
    eval_batch_size: int = 256
    precision: str = "auto"
    """auto | fp32 | bf16 | fp16: autocast dtype of the CNN while training. auto = bf16 where
    the device multiplies bf16 natively (CPU with AMX or AVX512-BF16, CUDA with bf16), fp16
    on a CUDA GPU of compute capability 7.x (T4, V100: fp16 tensor cores, no bf16), else
    fp32. fp16 trains with a gradient scaler (torch.amp.GradScaler, saved in the checkpoint)
    and needs CUDA. Similarity head, losses and optimizer state stay fp32; evaluation is
    always IEEE fp32."""
    channels_last: bool = True
    """NHWC memory format for the model and the batches while training (faster convolutions
    on CPU and CUDA; the same numbers up to summation order)."""
    compile: bool = False
    """torch.compile the model's forward pass (needs a C++ compiler on CPU)."""
    evaluate_checkpoint: Literal["best", "last"] = "best"
    """Which checkpoint the evaluation suites see: best validation accuracy (ties keep the
    later epoch) or the last epoch (the protocol of the papers' reference notebooks)."""
    check_finite_every: int = 50
    """Steps between checks that the loss is finite; each check waits for the device."""
    deterministic: bool = False
    """true: deterministic kernels (torch.use_deterministic_algorithms, cuDNN deterministic
    and no autotuning, CUBLAS_WORKSPACE_CONFIG=:4096:8), so a CUDA run, and a resume, repeat
    bit for bit on the same GPU and software; an op without a deterministic kernel raises.
    Costs speed on CUDA (cuDNN's fastest convolutions are often nondeterministic, and
    atomics-based backward kernels are replaced: expect 10-50 % slower steps). false (the
    default) lets cuDNN autotune convolutions (cudnn.benchmark) on CUDA: faster, but not
    bit-exact from run to run. A CPU run is deterministic either way. Not yet usable on CUDA
    with the ResNets: torch has no deterministic CUDA backward for adaptive_avg_pool2d (their
    global pooling), so the first step raises naming it."""


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)

    # --- construction -----------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, validate: bool = True) -> RunConfig:
        cfg = build_dataclass(cls, d or {}, "")
        if validate:
            cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
        from neuroreg.yamlio import read_yaml_file

        p = Path(path)
        d = read_yaml_file(p, "--config", "run config YAML")
        d = {} if d is None else d
        if not isinstance(d, dict):
            raise ConfigError("--config", f"{p} must hold a mapping at top level")
        d = apply_overrides(d, overrides or [])
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # --- validation ---------------------------------------------------------
    def validate(self, check_files: bool = True, data_roots: bool = True) -> RunConfig:
        """Check every field; raise ConfigError naming the first bad one.

        ``check_files``: also that the named files and folders exist. ``data_roots``: that
        data sets which need a root have one (off for a checkpoint's stored config, whose
        data location is never used).
        """
        validate_data(self.data, "data", check_files, data_roots)
        m = self.model
        if m.name not in available_models():
            raise ConfigError("model.name", f"unknown model {m.name!r}; choose one of {available_models()}")
        _positive(m.width, "model.width")
        if m.stem not in ("3x3", "7x7"):
            raise ConfigError("model.stem", "must be '3x3' or '7x7'")
        if m.blur_sigma < 0:
            raise ConfigError("model.blur_sigma", "must be >= 0 (0 = no blur)")

        r = self.regularizer
        validate_target(r, check_files)
        if not (r.alpha >= 0) or r.alpha != r.alpha:
            raise ConfigError("regularizer.alpha", f"must be >= 0, got {r.alpha}")
        if not (0.0 < r.th < 1.0):
            raise ConfigError("regularizer.th", f"must lie in (0, 1), got {r.th}")
        taps = tap_points(m.name)
        if not r.layers:
            raise ConfigError("regularizer.layers", f"choose at least one of {taps}")
        for layer in r.layers:
            if layer not in taps:
                raise ConfigError("regularizer.layers", f"{layer!r} is no tap point of {m.name}; choose from {taps}")
        if r.loss not in ("atanh", "mse"):
            raise ConfigError("regularizer.loss", "must be 'atanh' or 'mse'")
        if r.centering not in ("running", "batch"):
            raise ConfigError("regularizer.centering", "must be 'running' or 'batch'")
        if not (0.0 <= r.ema_beta < 1.0):
            raise ConfigError("regularizer.ema_beta", "must lie in [0, 1)")
        if r.pairing not in PAIRINGS:
            raise ConfigError("regularizer.pairing", f"must be one of {', '.join(PAIRINGS)}, got {r.pairing!r}")
        if r.n_pairs is None:
            if r.pairing != "shared":
                raise ConfigError("regularizer.n_pairs", f"null (all pairs of the batch) is for pairing: shared; "
                                                         f"pairing: {r.pairing} needs a number (the papers: 16)")
        else:
            _positive(r.n_pairs, "regularizer.n_pairs")
        if r.pairing == "shared" and r.target != "none":  # the target and set: validate_target
            bs = self.train.batch_size
            if isinstance(bs, int) and not isinstance(bs, bool) and bs < 2:
                raise ConfigError("train.batch_size", "pairing: shared takes its pairs from the classification batch, "
                                                      "which needs >= 2 images; raise it or use pairing: pairs")
            most = bs * (bs - 1) // 2 if isinstance(bs, int) else None
            if r.n_pairs is not None and most is not None and r.n_pairs > most:
                raise ConfigError("regularizer.n_pairs", f"pairing: shared draws pairs from the classification batch, "
                                                         f"whose {self.train.batch_size} images have {most} pairs; set "
                                                         f"n_pairs <= {most}, or null for all of them")
        if r.batch_k < 2:
            raise ConfigError("regularizer.batch_k", "must be >= 2 (pairs need two images)")
        if r.n < 2:
            raise ConfigError("regularizer.n", "must be >= 2")
        if r.eps <= 0:
            raise ConfigError("regularizer.eps", "must be > 0 (it keeps d(+-1) finite)")
        if r.data is not None:
            validate_data(r.data, "regularizer.data", check_files, data_roots)

        o = self.optim
        _positive(o.lr, "optim.lr")
        if not (0 <= o.momentum < 1):
            raise ConfigError("optim.momentum", "must lie in [0, 1)")
        if o.weight_decay < 0:
            raise ConfigError("optim.weight_decay", "must be >= 0")
        if o.schedule not in ("step_cycle", "cosine", "constant"):
            raise ConfigError("optim.schedule", "must be step_cycle, cosine or constant")
        _positive(o.step, "optim.step")
        _positive(o.cycle, "optim.cycle")
        if not (0 < o.gamma <= 1):
            raise ConfigError("optim.gamma", "must lie in (0, 1]")

        t = self.train
        _positive(t.epochs, "train.epochs")
        _positive(t.batch_size, "train.batch_size")
        _positive(t.eval_batch_size, "train.eval_batch_size")
        if t.max_steps_per_epoch is not None:
            _positive(t.max_steps_per_epoch, "train.max_steps_per_epoch")
        if t.num_threads is not None:
            _positive(t.num_threads, "train.num_threads")
        if not (t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:")):
            raise ConfigError("train.device", "must be auto, cpu, cuda or cuda:N")
        if t.precision not in PRECISIONS:
            raise ConfigError("train.precision", f"{t.precision!r} is not a precision; use {', '.join(PRECISIONS)}")
        if t.precision == "fp16" and t.device == "cpu":
            raise ConfigError("train.precision", "fp16 (autocast with a gradient scaler) is for CUDA GPUs without "
                                                 "native bf16; on train.device: cpu use bf16, fp32 or auto")
        _positive(t.check_finite_every, "train.check_finite_every")
        if t.evaluate_checkpoint not in ("best", "last"):
            raise ConfigError("train.evaluate_checkpoint", "must be best or last")
        self.evaluation.validate("evaluation")
        check_run_limits(self)
        return self


# --- helpers ------------------------------------------------------------------


def expand_path(value: str, field_name: str) -> str:
    """``~`` and ``$VARS`` expanded (e.g. ``$NEUROREG_DATA_ROOT/cifar10-jpg.tar.gz``)."""
    out = os.path.expandvars(os.path.expanduser(value))
    if "$" in out:
        raise ConfigError(field_name, f"{value!r} names an environment variable that is not set; set it or write the path out")
    return out


def data_root(cfg: DataConfig, field_name: str = "data.root") -> str | None:
    """The effective data root: the field (variables expanded), else $NEUROREG_DATA_ROOT."""
    if cfg.root:
        return expand_path(cfg.root, field_name)
    return os.environ.get("NEUROREG_DATA_ROOT") or None


def validate_data(d: DataConfig, name: str, check_files: bool, data_roots: bool = True) -> None:
    """One data section (``data`` or ``regularizer.data``); see ``RunConfig.validate``."""
    if d.name not in DATASETS:
        raise ConfigError(f"{name}.name", f"unknown data set {d.name!r}; choose one of {DATASETS}")
    if d.image_size is not None:
        _positive(d.image_size, f"{name}.image_size")
    if d.subset is not None:
        _positive(d.subset, f"{name}.subset")
    if d.test_subset is not None:
        _positive(d.test_subset, f"{name}.test_subset")
    if not (0.0 <= d.val_fraction < 1.0):
        raise ConfigError(f"{name}.val_fraction", f"must lie in [0, 1), got {d.val_fraction}")
    if d.crop_padding < 0:
        raise ConfigError(f"{name}.crop_padding", "must be >= 0")
    if d.name in ("digits", "synthetic") or not data_roots:
        return
    root = data_root(d, f"{name}.root")
    if root is None:
        raise ConfigError(
            f"{name}.root",
            f"data set {d.name!r} needs a data root: set {name}.root or $NEUROREG_DATA_ROOT "
            "(add download: true to fetch torchvision sets)",
        )
    if not check_files:
        return
    if d.name == "imagefolder":
        if not Path(root).exists():
            raise ConfigError(f"{name}.root", f"{root} does not exist (a folder or .tar/.tar.gz of class folders)")
    elif not d.download and not Path(root).is_dir():
        raise ConfigError(f"{name}.root", f"{root} is not a folder; fix the path or set {name}.download: true")


def _positive(v: Any, name: str) -> None:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
        raise ConfigError(name, f"must be a positive number, got {v!r}")


def field_paths(cls: type = None, prefix: str = "") -> list[str]:
    """All dotted leaf field names of the config tree (for search-space validation)."""
    cls = cls or RunConfig
    out = []
    hints = get_type_hints(cls)
    for f in fields(cls):
        tp = hints[f.name]
        name = f"{prefix}{f.name}"
        inner = [a for a in get_args(tp) if is_dataclass(a)] if get_origin(tp) else []
        if is_dataclass(tp):
            out += field_paths(tp, name + ".")
        elif inner:
            out.append(name)
            out += field_paths(inner[0], name + ".")
        else:
            out.append(name)
    return out
