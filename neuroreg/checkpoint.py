"""Checkpoint files: tensors and plain values only, read with ``weights_only=True``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuroreg.atomic import atomic_write
from neuroreg.config import RunConfig


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write atomically (temp file + rename), so an interrupted save never leaves a torn file."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location=map_location, weights_only=True)


def build_model(cfg: RunConfig, num_classes: int, in_chans: int) -> nn.Module:
    from neuroreg.models import create_model

    m = cfg.model
    return create_model(
        m.name, num_classes=num_classes, in_chans=in_chans, width=m.width, stem=m.stem, blur_sigma=m.blur_sigma
    )


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, RunConfig]:
    """The model of a trainer checkpoint (eval mode) and its run configuration."""
    state = load_checkpoint(path, map_location=device)
    cfg = RunConfig.from_dict(state["config"], validate=False)
    model = build_model(cfg, state["num_classes"], state["in_chans"])
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg
