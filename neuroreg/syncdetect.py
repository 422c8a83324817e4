"""Find host-device synchronisations of a CUDA run on a CPU.

On CUDA a step loop runs ahead of the GPU until Python asks for a value: ``.item()``,
``.tolist()``, ``.cpu()``, ``bool(t)`` (an ``if`` on a tensor), ``int(t)``, ``nonzero``,
boolean-mask indexing, a blocking ``.to(device)`` of host data, ... Each one makes the host
wait until the GPU queue has drained. ``torch.cuda.set_sync_debug_mode`` finds them, but
only on a GPU. :class:`SyncDetector` finds the same calls on a CPU: a ``TorchFunctionMode``
that sees every torch call, knows which tensors would live on the GPU, and records each call
that would force a sync there, with the code line that made it.

Which tensors are "on the device" cannot be read from a CPU tensor, so it is tracked:
``mark_device(...)`` names the run's device tensors (model, head, target, data, optimizer),
and from then on the result of any torch call with a device tensor among its inputs is a
device tensor, as are factories called with ``device=`` and copies made with
``.to(<torch.device>)`` / ``.cuda()``; ``.cpu()``, ``.numpy()`` and ``.to("cpu")`` (the
string) are host copies. In a CPU run ``x.device`` is ``cpu`` too, so a ``torch.device`` or
tensor argument of ``.to`` is taken as the device and only the string ``"cpu"`` as the host.

    det = SyncDetector()
    det.mark_device(model, x_train)
    with det:
        train_some_steps()
    assert not det.outside("_check_finite"), det.report()
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

READBACK = frozenset({
    "item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "__complex__", "__format__",
    "__repr__", "__array__", "__contains__", "_local_scalar_dense", "equal", "allclose", "is_nonzero",
})
"""Calls that copy a device value to the host and wait for it."""
DATA_DEPENDENT = frozenset({
    "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "bincount", "nonzero_static_",
})
"""Calls whose output size depends on device values: the host reads that size back."""

_SKIP_FILES = (os.path.dirname(torch.__file__), os.path.abspath(__file__))


@dataclass(frozen=True)
class Sync:
    """One call that would make the host wait for the GPU."""

    call: str
    """What was called and why it syncs, e.g. ``Tensor.item``, ``blocking host-to-device .to``."""
    where: str
    """``file:line in function`` of the first frame outside torch."""
    stack: tuple[str, ...]
    """Function names of the frames outside torch, innermost first."""


class SyncDetector(TorchFunctionMode):
    """Records the calls that would synchronise with the GPU (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._device: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._hooks: list[Any] = []
        self.syncs: list[Sync] = []

    # --- which tensors live on the device -------------------------------------------------

    def is_device(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and t in self._device

    def mark_device(self, *objs: Any) -> SyncDetector:
        """Tensors, modules (parameters, buffers, and their gradients once they exist),
        optimizers (state), containers and plain objects holding tensors (a Target)."""
        seen: set[int] = set()
        for obj in objs:
            self._mark(obj, seen, depth=0)
        return self

    def _mark(self, obj: Any, seen: set[int], depth: int) -> None:
        if id(obj) in seen or depth > 6:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            self._device[obj] = True
        elif isinstance(obj, nn.Module):
            for p in obj.parameters():
                self._device[p] = True
                if p.requires_grad:
                    self._hooks.append(p.register_post_accumulate_grad_hook(self._mark_grad))
            for b in obj.buffers():
                self._device[b] = True
        elif isinstance(obj, torch.optim.Optimizer):
            self._mark(list(obj.state.values()), seen, depth + 1)
        elif isinstance(obj, dict):
            for v in obj.values():
                self._mark(v, seen, depth + 1)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                self._mark(v, seen, depth + 1)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            for v in vars(obj).values():
                self._mark(v, seen, depth + 1)

    def _mark_grad(self, p: torch.Tensor) -> None:
        if p.grad is not None:
            self._device[p.grad] = True

    def __exit__(self, *exc: Any) -> Any:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        return super().__exit__(*exc)

    # --- the mode ----------------------------------------------------------------------------

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "") or ""
        why, to_host, to_device = self._classify(func, name, args, kwargs)
        if why:
            self.syncs.append(_record(why))
        out = func(*args, **kwargs)
        if to_host or to_device:
            if isinstance(out, torch.Tensor) and any(out is a for a in args):
                out = _alias(out)  # a new object: the source keeps its own place
            if to_device:
                self._taint(out)
        elif _has_device_input(self, args, kwargs) or self._is_device_factory(name, kwargs):
            self._taint(out)
        return out

    def _taint(self, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            self._device[out] = True
        elif isinstance(out, (list, tuple)):
            for o in out:
                self._taint(o)

    @staticmethod
    def _is_device_factory(name: str, kwargs: dict) -> bool:
        device = kwargs.get("device")
        return device is not None and not (isinstance(device, str) and device == "cpu") and name != "to"

    def _classify(self, func, name: str, args: tuple, kwargs: dict) -> tuple[str | None, bool, bool]:
        """(why it syncs or None, result is a host copy, result is a device copy)."""
        self_t = args[0] if args else None
        on_device = self.is_device(self_t)
        qual = f"Tensor.{name}" if isinstance(self_t, torch.Tensor) else f"torch.{name}"
        if name in ("cpu", "numpy"):
            return (qual if on_device else None), True, False
        if name == "cuda":
            blocking = not kwargs.get("non_blocking", False)
            return ("blocking host-to-device .cuda()" if blocking and not on_device else None), False, True
        if name == "to":
            return self._classify_to(on_device, args, kwargs)
        if name == "copy_" and len(args) >= 2 and isinstance(args[1], torch.Tensor):
            blocking = not (args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
            crosses = on_device != self.is_device(args[1])
            return ("blocking copy_ between host and device" if blocking and crosses else None), False, False
        if name in ("tensor", "as_tensor") and self._is_device_factory(name, kwargs):
            return f"torch.{name}(..., device=): blocking host-to-device copy", False, True
        if name in READBACK and on_device:
            return qual, False, False
        if (name in DATA_DEPENDENT or (name == "where" and len(args) == 1 and not kwargs)) and on_device:
            return f"{qual} (output size read back)", False, False
        if name == "repeat_interleave" and "output_size" not in kwargs and any(
                self.is_device(a) for a in args[:2]):
            return f"{qual} without output_size", False, False
        if name in ("__getitem__", "__setitem__") and on_device and len(args) >= 2:
            return self._classify_index(name, args), False, False
        return None, False, False

    def _classify_to(self, on_device: bool, args: tuple, kwargs: dict) -> tuple[str | None, bool, bool]:
        target = kwargs.get("device")
        for a in args[1:]:
            if isinstance(a, (str, int, torch.device)) and not isinstance(a, bool) or isinstance(a, torch.Tensor):
                target = a
                break
        non_blocking = bool(kwargs.get("non_blocking", False)) or any(a is True for a in args[1:])
        if target is None:
            return None, False, False
        if isinstance(target, torch.Tensor):
            host = not self.is_device(target)
        else:
            host = isinstance(target, str) and target == "cpu"
        if host:
            return ("blocking device-to-host .to('cpu')" if on_device and not non_blocking else None), True, False
        if not on_device and not non_blocking:
            return "blocking host-to-device .to(device)", False, True
        return None, False, True

    def _classify_index(self, name: str, args: tuple) -> str | None:
        index = args[1] if isinstance(args[1], (tuple, list)) else (args[1],)
        for ix in index:
            if isinstance(ix, torch.Tensor) and ix.dtype == torch.bool:
                return f"Tensor.{name} with a boolean mask (nonzero)"
            if isinstance(ix, torch.Tensor) and not self.is_device(ix):
                return f"Tensor.{name} with a host index tensor (blocking host-to-device copy)"
        if name == "__setitem__" and len(args) > 2 and isinstance(args[2], torch.Tensor) and args[2].dim() > 0 \
                and not self.is_device(args[2]):
            return "Tensor.__setitem__ of a host tensor (blocking host-to-device copy)"
        return None

    # --- results -----------------------------------------------------------------------------

    def outside(self, *functions: str) -> list[Sync]:
        """The syncs not made within any of ``functions`` (names of functions on the stack)."""
        return [s for s in self.syncs if not any(f in s.stack for f in functions)]

    def within(self, function: str) -> list[Sync]:
        return [s for s in self.syncs if function in s.stack]

    def report(self, syncs: list[Sync] | None = None) -> str:
        syncs = self.syncs if syncs is None else syncs
        counts: dict[tuple[str, str], int] = {}
        for s in syncs:
            counts[(s.call, s.where)] = counts.get((s.call, s.where), 0) + 1
        return "\n".join(f"{n:4d} x {call} at {where}" for (call, where), n in counts.items()) or "no syncs"


def _has_device_input(det: SyncDetector, args: tuple, kwargs: dict) -> bool:
    def walk(x: Any) -> bool:
        if isinstance(x, torch.Tensor):
            return det.is_device(x)
        if isinstance(x, (list, tuple)):
            return any(walk(v) for v in x)
        if isinstance(x, dict):
            return any(walk(v) for v in x.values())
        return False

    return walk(args) or walk(kwargs)


def _alias(t: torch.Tensor) -> torch.Tensor:
    try:
        return t.view_as(t)
    except RuntimeError:
        return t


def _record(why: str) -> Sync:
    frame = sys._getframe(2)
    where, stack = None, []
    while frame is not None:
        path = frame.f_code.co_filename
        if not path.startswith(_SKIP_FILES):
            stack.append(frame.f_code.co_name)
            if where is None:
                where = f"{os.path.relpath(path) if path.startswith(os.getcwd()) else path}:{frame.f_lineno} " \
                        f"in {frame.f_code.co_name}"
        frame = frame.f_back
    return Sync(why, where or "?", tuple(stack))
