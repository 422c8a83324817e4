"""Checkpoint files: tensors and plain values only, read with ``weights_only=True``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuroreg.atomic import atomic_write
from neuroreg.config import RunConfig
from neuroreg.errors import CheckpointError, ConfigError
from neuroreg.safe_io import check_regular

MAX_CLASSES = 100_000
"""Most classes a checkpoint may claim (ImageNet-21k has 21,841)."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write atomically (temp file + rename), so an interrupted save never leaves a torn file."""
    return atomic_write(path, lambda f: torch.save(state, f))


REQUIRED_KEYS = ("model", "config", "num_classes", "in_chans", "epoch")


MAX_CHECKPOINT_BYTES = 16 << 30
"""Largest checkpoint read (16 GiB: a ResNet34 of width 512 with its optimizer state is ~5 GiB)."""


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A trainer checkpoint, read with ``weights_only=True`` (no code in the file runs).

    Anything else (random bytes, an empty file, a pickle with code, a dict without the
    trainer's keys, a FIFO or device) raises CheckpointError saying why, never torch's
    advice to retry with ``weights_only=False``.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        st = check_regular(path, str(path), "checkpoint file (.pt)")
    except ConfigError as e:
        raise CheckpointError(path, e.message) from None
    if st.st_size == 0:
        raise CheckpointError(path, "the file is empty")
    if st.st_size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(path, f"the file is {st.st_size / 2**30:.1f} GiB, above the {MAX_CHECKPOINT_BYTES >> 30} GiB "
                                    "a trainer checkpoint can reach")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (zip), EOFError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            first = "it holds Python objects beyond tensors and plain values (refused unread: loading it could run code)"
        raise CheckpointError(path, first[:300]) from None
    if not isinstance(state, dict):
        raise CheckpointError(path, f"holds a {type(state).__name__}, not the trainer's dict")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(path, f"missing {missing} (a trainer checkpoint has {list(REQUIRED_KEYS)})")
    return state


def checkpoint_config(path: str | os.PathLike, state: dict[str, Any], data_roots: bool = False) -> RunConfig:
    """The stored run config, validated like any config (no file is looked at: the paths in it
    are the training machine's); a CheckpointError naming the field otherwise."""
    try:
        cfg = RunConfig.from_dict(state["config"], validate=False)
        cfg.validate(check_files=False, data_roots=data_roots)
    except ConfigError as e:
        raise CheckpointError(path, f"its stored config is invalid: {e}") from None
    nc, ic = state["num_classes"], state["in_chans"]
    if not isinstance(nc, int) or isinstance(nc, bool) or not 1 <= nc <= MAX_CLASSES:
        raise CheckpointError(path, f"num_classes must be an integer in [1, {MAX_CLASSES}], got {nc!r}")
    if ic not in (1, 3):
        raise CheckpointError(path, f"in_chans must be 1 or 3, got {ic!r}")
    return cfg


def check_model_state(path: str | os.PathLike, cfg: RunConfig, state: dict[str, Any]) -> None:
    """The stored weights fit the model the config describes, and are finite.

    The model is built on the "meta" device (shapes only, no memory), so a config claiming
    a width of 3000 beside small weights is refused without allocating anything.
    """
    weights = state["model"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(path, "its 'model' entry is not a state dict of tensors")
    try:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in build_model(cfg, state["num_classes"], state["in_chans"])
                      .state_dict().items()}
    except (ConfigError, RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(path, f"its model cannot be built: {str(e).splitlines()[0][:300]}") from None
    missing, extra = sorted(set(shapes) - set(weights)), sorted(set(weights) - set(shapes))
    if missing or extra:
        raise CheckpointError(path, f"its weights do not fit {cfg.model.name} (missing {missing[:5]}, "
                                    f"unexpected {extra[:5]})")
    for k, shape in shapes.items():
        if tuple(weights[k].shape) != shape:
            raise CheckpointError(
                path, f"weight {k} has shape {tuple(weights[k].shape)}, but the stored config "
                      f"(model.width={cfg.model.width}, num_classes={state['num_classes']}, "
                      f"in_chans={state['in_chans']}) makes it {shape}")
    for k, v in weights.items():
        if v.is_floating_point() and v.device.type != "meta" and not bool(torch.isfinite(v).all()):
            raise CheckpointError(path, f"weight {k} holds NaN or infinite values (the run diverged?)")


def build_model(cfg: RunConfig, num_classes: int, in_chans: int) -> nn.Module:
    from neuroreg.models import create_model

    m = cfg.model
    return create_model(
        m.name, num_classes=num_classes, in_chans=in_chans, width=m.width, stem=m.stem, blur_sigma=m.blur_sigma
    )


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, RunConfig]:
    """The model of a trainer checkpoint (eval mode) and its run configuration.

    The stored config is validated and the weights' shapes compared with the model it
    describes before any model is allocated; non-finite weights are refused.
    """
    state = load_checkpoint(path, map_location="cpu")
    cfg = checkpoint_config(path, state)
    check_model_state(path, cfg, state)
    try:
        model = build_model(cfg, state["num_classes"], state["in_chans"])
        model.load_state_dict(state["model"])
    except (ConfigError, RuntimeError, TypeError, KeyError, ValueError) as e:
        raise CheckpointError(path, f"its model does not load: {str(e).splitlines()[0][:300]}") from None
    return model.to(device).eval(), cfg


# --- layer weights -------------------------------------------------------------------


COLLAPSE_WEIGHT = 0.99
"""A run has collapsed when one layer holds at least this share of the similarity weight."""


def layer_weights_of(state: dict[str, Any], layers: list[str]) -> dict[str, float]:
    """Softmax layer weights stored in a checkpoint's similarity head."""
    logits = state["similarity"]["layer_logits"].float().cpu()
    return dict(zip(layers, torch.softmax(logits, dim=0).tolist()))


def collapse_summary(weights: dict[str, float]) -> dict[str, Any]:
    """Dominant layer, its weight, and whether one layer holds >= COLLAPSE_WEIGHT of it."""
    if not weights:
        return {}
    name = max(weights, key=weights.get)
    return {"dominant_layer": name, "dominant_weight": weights[name],
            "collapsed": bool(weights[name] >= COLLAPSE_WEIGHT)}


# --- the trainer's state: what checkpoint_last.pt holds for an exact resume ----------------


def trainer_state(
    cfg: RunConfig, model: nn.Module, opt: torch.optim.Optimizer, head: nn.Module | None,
    gen_data: torch.Generator, gen_pairs: torch.Generator, num_classes: int, in_chans: int,
    epoch: int, lr: float, best_val_acc: float, initial_val_sim_loss: float, history: list[dict[str, Any]],
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, Any]:
    """The checkpoint dict after ``epoch`` (1-based): tensors and plain values only.

    ``scaler`` (fp16 training) adds its state (the loss scale and its growth tracker: plain
    numbers) under "scaler"; other runs' checkpoints have no such key.
    """
    extra = {"scaler": scaler.state_dict()} if scaler is not None else {}
    return {
        "model": model.state_dict(),
        "config": cfg.to_dict(),
        "num_classes": num_classes,
        "in_chans": in_chans,
        "epoch": epoch,
        "optimizer": opt.state_dict(),
        "schedule": {"name": cfg.optim.schedule, "lr": lr},
        "similarity": head.state_dict() if head is not None else {},
        "rng": {"data": gen_data.get_state(), "pairs": gen_pairs.get_state()},
        "best_val_acc": best_val_acc,
        "initial_val_sim_loss": initial_val_sim_loss,
        "history": history,
        **extra,
    }


def restore_trainer_state(
    path: str | os.PathLike, device: torch.device, model: nn.Module, opt: torch.optim.Optimizer,
    head: nn.Module | None, gen_data: torch.Generator, gen_pairs: torch.Generator,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[int, float, list[dict[str, Any]], float]:
    """Load ``path`` into the live objects; returns (epoch, best_val_acc, history, initial_val_sim_loss).

    ``scaler`` (fp16 training) gets the saved loss scale back, so a resumed run neither
    restarts from the initial scale (a burst of skipped steps) nor diverges from the
    uninterrupted run; a checkpoint of an fp16 run without it is refused.

    The file is read onto the CPU whatever ``device`` is: the generators take only CPU byte
    tensors (``Generator.set_state``), and ``load_state_dict`` of the model, the optimizer
    and the head copies every other state onto the device of the object it belongs to.
    """
    st = load_checkpoint(path, map_location="cpu")
    try:
        rng = st["rng"]
        states = [rng["data"], rng["pairs"]]
        if not all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1 for t in states):
            raise TypeError("rng states must be 1-D uint8 tensors")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        if head is not None:
            head.load_state_dict(st["similarity"])
        if scaler is not None:
            if "scaler" not in st:
                raise ValueError("it holds no gradient scaler state (saved by a run that was not fp16)")
            saved = st["scaler"]
            if not isinstance(saved, dict) or not all(isinstance(v, (int, float)) for v in saved.values()):
                raise TypeError("the saved gradient scaler state must be a dict of numbers")
            scaler.load_state_dict(saved)
        gen_data.set_state(states[0].cpu())
        gen_pairs.set_state(states[1].cpu())
        return (int(st["epoch"]), float(st["best_val_acc"]), list(st["history"]),
                float(st.get("initial_val_sim_loss", float("nan"))))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(path, f"cannot resume from it: {str(e).splitlines()[0][:300] if str(e) else type(e).__name__}") from None
