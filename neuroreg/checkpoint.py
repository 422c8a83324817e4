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


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write atomically (temp file + rename), so an interrupted save never leaves a torn file."""
    return atomic_write(path, lambda f: torch.save(state, f))


REQUIRED_KEYS = ("model", "config", "num_classes", "in_chans", "epoch")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A trainer checkpoint, read with ``weights_only=True`` (no code in the file runs).

    Anything else (random bytes, an empty file, a pickle with code, a dict without the
    trainer's keys) raises CheckpointError saying why, never torch's advice to retry with
    ``weights_only=False``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(path, "the file is empty")
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


def build_model(cfg: RunConfig, num_classes: int, in_chans: int) -> nn.Module:
    from neuroreg.models import create_model

    m = cfg.model
    return create_model(
        m.name, num_classes=num_classes, in_chans=in_chans, width=m.width, stem=m.stem, blur_sigma=m.blur_sigma
    )


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, RunConfig]:
    """The model of a trainer checkpoint (eval mode) and its run configuration."""
    state = load_checkpoint(path, map_location=device)
    try:
        cfg = RunConfig.from_dict(state["config"], validate=False)
        model = build_model(cfg, state["num_classes"], state["in_chans"])
        model.load_state_dict(state["model"])
    except (ConfigError, RuntimeError, TypeError, KeyError, ValueError) as e:
        raise CheckpointError(path, f"its model does not load: {str(e).splitlines()[0][:300]}") from None
    return model.to(device).eval(), cfg


# --- the trainer's state: what checkpoint_last.pt holds for an exact resume ----------------


def trainer_state(
    cfg: RunConfig, model: nn.Module, opt: torch.optim.Optimizer, head: nn.Module | None,
    gen_data: torch.Generator, gen_pairs: torch.Generator, num_classes: int, in_chans: int,
    epoch: int, lr: float, best_val_acc: float, initial_val_sim_loss: float, history: list[dict[str, Any]],
) -> dict[str, Any]:
    """The checkpoint dict after ``epoch`` (1-based): tensors and plain values only."""
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
    }


def restore_trainer_state(
    path: str | os.PathLike, device: torch.device, model: nn.Module, opt: torch.optim.Optimizer,
    head: nn.Module | None, gen_data: torch.Generator, gen_pairs: torch.Generator,
) -> tuple[int, float, list[dict[str, Any]], float]:
    """Load ``path`` into the live objects; returns (epoch, best_val_acc, history, initial_val_sim_loss)."""
    st = load_checkpoint(path, map_location=device)
    model.load_state_dict(st["model"])
    opt.load_state_dict(st["optimizer"])
    if head is not None:
        head.load_state_dict(st["similarity"])
    gen_data.set_state(st["rng"]["data"])
    gen_pairs.set_state(st["rng"]["pairs"])
    return st["epoch"], st["best_val_acc"], list(st["history"]), st.get("initial_val_sim_loss", float("nan"))

