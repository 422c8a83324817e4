"""Training precision and memory layout (train.precision, train.channels_last).

bf16 autocast is only worth it where the hardware multiplies bf16 natively: on a CPU
without AMX or AVX512-BF16 oneDNN emulates it and a step gets an order of magnitude
slower (bench/train_throughput.py), so ``auto`` picks bf16 only where it is fast.
Everything numerically delicate stays in fp32: the similarity head (cosines near +-1),
the soft arctanh (values near +-12), the losses and the optimizer state (autocast casts
activations, never the fp32 parameters the optimizer updates).

"fp32" means IEEE fp32: torch lets cuDNN run fp32 convolutions in TF32 (a 10-bit
mantissa) on Ampere and newer GPUs by default. ``ieee_fp32()`` turns every TF32 mode
off (cuDNN convolutions and RNNs, cuBLAS and oneDNN matmuls) and restores the previous
settings on exit; fp32 training and all evaluation run inside it. Mixed-precision
training runs inside ``fast_fp32()``: the CNN computes in bf16 under autocast anyway, and
cuDNN may use TF32 for fp32 convolutions, while matmuls stay IEEE because the fp32
islands (the similarity head's Gram matrix, the losses) are matmuls. On a CPU these
flags change nothing unless a user turned oneDNN's reduced precision on.

fp16 is for CUDA GPUs with fp16 but no bf16 tensor cores (compute capability 7.x: T4,
V100), where ``auto`` picks it: the CNN runs under fp16 autocast with the same fp32
islands as bf16, and the loss is scaled by a ``torch.amp.GradScaler`` (fp16's range ends
at 65504, gradients underflow without it), whose state the checkpoint keeps. The
optimizer is then torch's fused SGD, which skips a step with non-finite gradients on the
device, so the scaler never reads a value back per step.

``determinism(deterministic, device)`` sets torch's deterministic-algorithm and cuDNN
flags for a run (train.deterministic) and restores them afterwards.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from neuroreg.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# --- fp32 math modes (TF32 or IEEE) ------------------------------------------------------

_PARENTS = (("generic", "all"), ("cuda", "all"), ("mkldnn", "all"))
_OPS = (("cuda", "conv"), ("cuda", "rnn"), ("cuda", "matmul"), ("mkldnn", "conv"), ("mkldnn", "rnn"),
        ("mkldnn", "matmul"))
FP32_KEYS = _PARENTS + _OPS
"""torch's fp32-precision settings (backend, op); "cuda" is cuDNN for conv / rnn, cuBLAS for
matmul. Parents come first: setting a parent rewrites its children."""

_IEEE = dict.fromkeys(FP32_KEYS, "none")
"""No TF32 anywhere: "none" everywhere is what the legacy flags call allow_tf32=False and
matmul precision "highest", so code reading those (torch.compile does) keeps working."""
_FAST = {**_IEEE, ("cuda", "conv"): "tf32", ("cuda", "rnn"): "tf32"}
"""torch's default: TF32 for cuDNN's fp32 convolutions, IEEE matmuls."""


def _has_fp32_api() -> bool:
    return hasattr(torch._C, "_get_fp32_precision_getter") and hasattr(torch._C, "_set_fp32_precision_setter")


def fp32_settings() -> dict[tuple[str, str], str]:
    """The current value of every key in FP32_KEYS ("none", "ieee", "tf32" or "bf16")."""
    return {k: torch._C._get_fp32_precision_getter(*k) for k in FP32_KEYS}


def _apply(settings: dict[tuple[str, str], str]) -> None:
    for key in FP32_KEYS:  # parents first, then every op explicitly
        torch._C._set_fp32_precision_setter(*key, settings[key])


def _effective(settings: dict[tuple[str, str], str], backend: str, op: str) -> str:
    """The mode an op really uses: "none" inherits from the backend, then the generic setting."""
    for key in ((backend, op), (backend, "all"), ("generic", "all")):
        if settings[key] != "none":
            return settings[key]
    return "ieee"


def fp32_modes(device_type: str = "cuda") -> dict[str, str]:
    """What fp32 convolutions and matmuls run in now on ``device_type`` ("ieee", "tf32", "bf16")."""
    backend = "cuda" if device_type == "cuda" else "mkldnn"
    if not _has_fp32_api():  # torch before the fp32_precision API (< 2.9)
        if device_type != "cuda":
            return {"fp32_conv": "ieee", "fp32_matmul": "ieee"}
        return {"fp32_conv": "tf32" if torch.backends.cudnn.allow_tf32 else "ieee",
                "fp32_matmul": "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"}
    s = fp32_settings()
    return {"fp32_conv": _effective(s, backend, "conv"), "fp32_matmul": _effective(s, backend, "matmul")}


def _legacy_flags() -> tuple[bool | None, bool | None]:
    """torch's legacy TF32 switches (cuDNN, cuBLAS); None where torch refuses to read one
    because the new API has set the ops to something else (a "mix of the APIs")."""
    out: list[bool | None] = []
    for read in (torch._C._get_cudnn_allow_tf32, torch._C._get_cublas_allow_tf32):
        try:
            out.append(bool(read()))
        except RuntimeError:
            out.append(None)
    return out[0], out[1]


def _set_legacy(cudnn: bool | None, cublas: bool | None) -> None:
    if cudnn is not None:
        torch.backends.cudnn.allow_tf32 = cudnn
    if cublas is not None:
        torch.backends.cuda.matmul.allow_tf32 = cublas


@contextlib.contextmanager
def _fp32_settings(wanted: dict[tuple[str, str], str], tf32_conv: bool) -> Iterator[None]:
    if not _has_fp32_api():  # torch before the fp32_precision API (< 2.9): the legacy flags only
        saved_legacy = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
                        torch.get_float32_matmul_precision())
        torch.set_float32_matmul_precision("highest")
        _set_legacy(tf32_conv, False)
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(saved_legacy[2])
            _set_legacy(*saved_legacy[:2])
        return
    saved, saved_legacy = fp32_settings(), _legacy_flags()
    # torch keeps the legacy switches beside the per-op settings and refuses to read them
    # (torch.compile does) when the two disagree: set both, the legacy ones first.
    _set_legacy(tf32_conv, False)
    _apply(wanted)
    try:
        yield
    finally:
        _set_legacy(*saved_legacy)
        _apply(saved)


def ieee_fp32() -> contextlib.AbstractContextManager:
    """IEEE fp32 convolutions and matmuls inside (no TF32, no oneDNN bf16); the previous
    settings come back on exit, also when the block raises."""
    return _fp32_settings(_IEEE, tf32_conv=False)


def fast_fp32() -> contextlib.AbstractContextManager:
    """TF32 for cuDNN's fp32 convolutions, IEEE matmuls (mixed-precision training)."""
    return _fp32_settings(_FAST, tf32_conv=True)


def cpu_has_fast_bf16() -> bool:
    """AMX tiles or AVX512-BF16 (what oneDNN uses for bf16 convolutions and matmuls)."""
    cpu = torch.cpu
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(cpu, probe, None)
        if fn is not None and fn():
            return True
    return False


def device_has_fast_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_has_fast_bf16()
    return False


def device_prefers_fp16(device: torch.device) -> bool:
    """A CUDA GPU of compute capability 7.x: fp16 tensor cores, no bf16 ones."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 7


def resolve_precision(requested: str, device: torch.device) -> str:
    """'fp32', 'bf16' or 'fp16' for ``requested`` in PRECISIONS on ``device``.

    auto: bf16 where it is native, fp16 on CUDA compute capability 7.x, else fp32. An
    explicit 'bf16' is honoured even where it is slow (parity studies need it); 'fp16'
    needs CUDA (a ConfigError naming train.precision elsewhere).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested == "auto":
        if device_has_fast_bf16(device):
            return "bf16"
        return "fp16" if device_prefers_fp16(device) else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision", f"fp16 (autocast with a gradient scaler) needs a CUDA device; this run "
                                             f"is on {device.type}: use bf16, fp32 or auto")
    return requested


def channels_last_safe(model: torch.nn.Module, device: torch.device) -> bool:
    """False where torch's CPU kernels mishandle the model in channels_last.

    torch 2.14.1 on CPU corrupts the heap ("free(): invalid next size", then abort) in the
    backward pass of a 1x1 stride-2 convolution with 2 to 7 input channels in channels_last:
    the shortcut of a ResNet of width < 8. Those models keep the contiguous layout.
    """
    if device.type != "cpu":
        return True
    for m in model.modules():
        if (
            isinstance(m, torch.nn.Conv2d)
            and m.kernel_size == (1, 1)
            and max(m.stride) > 1
            and 1 < m.in_channels < 8
        ):
            return False
    return True


@dataclass(frozen=True)
class Precision:
    """How the CNN's forward passes run: dtype under autocast and memory layout."""

    name: str = "fp32"
    """fp32, bf16 or fp16 (resolved, never auto)."""
    device_type: str = "cpu"
    channels_last: bool = False

    @classmethod
    def for_run(
        cls, requested: str, device: torch.device, channels_last: bool, model: torch.nn.Module | None = None
    ) -> Precision:
        """The run's precision; channels_last is dropped where ``model`` cannot use it safely."""
        if channels_last and model is not None and not channels_last_safe(model, device):
            channels_last = False
        return cls(resolve_precision(requested, device), device.type, channels_last)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 or fp16 autocast for the CNN's forward pass, or nothing for fp32."""
        if self.name in ("bf16", "fp16"):
            return torch.autocast(self.device_type, dtype=torch.bfloat16 if self.name == "bf16" else torch.float16)
        return contextlib.nullcontext()

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A loss scaler for fp16 training; None for fp32 and bf16 (bf16 has fp32's range)."""
        return torch.amp.GradScaler(self.device_type) if self.name == "fp16" else None

    def sgd(self, params: list[torch.nn.Parameter], lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
        """The trainer's SGD: torch's default for fp32 and bf16; for fp16 the fused one, which
        skips a step with non-finite gradients on the device (with another optimizer
        GradScaler.step reads found_inf back every step)."""
        if self.name != "fp16":
            return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=True)
        if momentum:
            # torch's fused SGD makes its momentum buffers with empty_like on the first step
            # and marks them initialised even when found_inf skips that step, so the next step
            # reads uninitialised memory (NaN weights after an overflow at the initial scale,
            # the usual start of fp16 training). Zero buffers instead: with dampening 0 the
            # first real step then stores exactly the gradient, as the first step would.
            for p in params:
                opt.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return opt

    def math(self) -> contextlib.AbstractContextManager:
        """The fp32 math modes of training: IEEE for fp32, the fast modes for mixed precision."""
        return ieee_fp32() if self.name == "fp32" else fast_fp32()

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """A 4-d batch in the run's memory format (no copy when it already is)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


FP32 = Precision()


# --- determinism (train.deterministic) --------------------------------------------------------

CUBLAS_WORKSPACE = ":4096:8"
"""cuBLAS's deterministic workspace setting (CUDA's documented value)."""


@contextlib.contextmanager
def determinism(deterministic: bool, device: torch.device) -> Iterator[None]:
    """Deterministic kernels inside when ``deterministic``; else cuDNN autotuning on CUDA.

    true: ``torch.use_deterministic_algorithms(True)`` (an op without a deterministic
    kernel raises, naming itself), ``cudnn.deterministic = True``, ``cudnn.benchmark =
    False``, and CUBLAS_WORKSPACE_CONFIG set to :4096:8 unless the user set it: cuBLAS
    reads it when its first handle is made, so the trainer enters this before it builds
    the model. The cost is speed on CUDA (often 10-50 % per step). false: on CUDA
    ``cudnn.benchmark = True`` (cuDNN times its convolution algorithms per shape and keeps
    the fastest: faster, not bit-exact between runs); a CPU run is left alone. The flags are
    process-wide, so the previous ones come back on exit (a Ray worker runs several
    trials); the environment variable stays (torch checks it at every cuBLAS call while
    deterministic algorithms are on, and the handles made under it live on).
    """
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
