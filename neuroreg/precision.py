"""Training precision and memory layout (train.precision, train.channels_last).

bf16 autocast is only worth it where the hardware multiplies bf16 natively: on a CPU
without AMX or AVX512-BF16 oneDNN emulates it and a step gets an order of magnitude
slower (bench/train_throughput.py), so ``auto`` picks bf16 only where it is fast.
Everything numerically delicate stays in fp32: the similarity head (cosines near +-1),
the soft arctanh (values near +-12), the losses and the optimizer state (autocast casts
activations, never the fp32 parameters the optimizer updates).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "fp32", "bf16")


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


def resolve_precision(requested: str, device: torch.device) -> str:
    """'fp32' or 'bf16' for ``requested`` in PRECISIONS on ``device``.

    An explicit 'bf16' is honoured even where it is slow (parity studies need it).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested == "auto":
        return "bf16" if device_has_fast_bf16(device) else "fp32"
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
    """fp32 or bf16 (resolved, never auto)."""
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
        """bf16 autocast for the CNN's forward pass, or nothing for fp32."""
        if self.name == "bf16":
            return torch.autocast(self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """A 4-d batch in the run's memory format (no copy when it already is)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


FP32 = Precision()
