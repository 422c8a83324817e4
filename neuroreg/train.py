"""The joint trainer: L = L_task + alpha * L_sim (METHOD.md section 1).

One classification batch and one pair batch per optimizer step; with alpha = 0 or
target = none no pair batch is computed at all, and with regularizer.pairing = shared the
pairs are pairs of the classification batch (one forward pass for both losses).

    python -m neuroreg.train --config run.yaml --set regularizer.alpha=4 --out runs/a
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuroreg.checkpoint import (  # collapse_summary: re-exported (sweep/trainable.py)
    build_model,
    collapse_summary,  # noqa: F401
    layer_weights_of,
    load_checkpoint,
    restore_trainer_state,
    save_checkpoint,
    trainer_state,
)
from neuroreg.config import ConfigError, RunConfig
from neuroreg.data import (
    ImageData,
    Splits,
    augment_batch,
    load_regularization_set,
    load_splits,
    regularization_indices,
    to_float,
)
from neuroreg.evaluate.common import accuracy
from neuroreg.joint_loss import (  # noqa: F401 (re-exported: the step's loss and its pairs)
    fixed_pair_similarity_loss,
    joint_loss,
    sample_pairs,
    shared_pairs,
)
from neuroreg.paths import check_output_folder
from neuroreg.precision import Precision, determinism, fp32_modes, ieee_fp32
from neuroreg.similarity import SimilarityHead
from neuroreg.targets import BatchTarget, SharedImages, Target, build_shared_target, build_target


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class PreparedData:
    """Decoded data of a run: shareable between runs with the same data configuration."""

    splits: Splits
    reg: ImageData | None


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, Any]]
    best_val_acc: float
    out_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    wall_s: float
    initial_val_sim_loss: float = 0.0
    evaluated_checkpoint: Path | None = None
    """The checkpoint whose model this is (train.evaluate_checkpoint)."""
    evaluated_epoch: int = 0
    evaluated_layer_weights: dict[str, float] = field(default_factory=dict)
    """Softmax layer weights of the evaluated checkpoint (not of the last epoch)."""
    test: ImageData | None = field(repr=False, default=None)


# --- pieces ------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("train.device", f"{name} requested but CUDA is not available; use auto or cpu")
    return torch.device(name)


def learning_rate(cfg: RunConfig, epoch: int) -> float:
    """LR of a 0-based epoch: step_cycle = lr * gamma^((epoch // step) % cycle) (papers)."""
    o = cfg.optim
    if o.schedule == "step_cycle":
        return o.lr * o.gamma ** ((epoch // o.step) % o.cycle)
    if o.schedule == "cosine":
        return 0.5 * o.lr * (1 + math.cos(math.pi * epoch / cfg.train.epochs))
    return o.lr


def prepare_data(cfg: RunConfig) -> PreparedData:
    splits = load_splits(cfg.data)
    reg = None
    if cfg.regularizer.active and cfg.regularizer.pairing == "shared":
        # The regularization set is the training split's own images: no second load.
        reg = splits.train.select(regularization_indices(cfg.regularizer, len(splits.train)))
    elif cfg.regularizer.active:
        reg = load_regularization_set(cfg.regularizer, cfg.data)
    return PreparedData(splits, reg)


_WHICH = {1: "the task loss (cross-entropy)", 2: "the similarity loss", 3: "both the task and the similarity loss",
          0: "the total loss (task + alpha x similarity overflowed)"}


def _note_bad(first_bad: torch.Tensor, step: int, loss: torch.Tensor, task: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
    """On the device: (step + 1) * 4 + which loss (1 task, 2 similarity, 3 both) the first time
    the total is non-finite, -1 before; nothing is read back here."""
    which = (~torch.isfinite(task)).long() + 2 * (~torch.isfinite(sim)).long()
    return torch.where((first_bad < 0) & ~torch.isfinite(loss), (step + 1) * 4 + which, first_bad)


def _check_finite(first_bad: torch.Tensor, incomplete: torch.Tensor | None, epoch: int) -> None:
    """The every-N-steps check: one read-back of the loss's state (and the target's flag)."""
    if incomplete is None:
        code, unfinished = int(first_bad), 0
    else:
        code, unfinished = torch.stack([first_bad, incomplete.to(first_bad.device).long()]).tolist()
    if code >= 0:
        step, which = divmod(code, 4)
        raise TrainingDiverged(
            f"{_WHICH[which]} became NaN or infinite at epoch {epoch + 1}, step {step}; lower optim.lr or "
            "regularizer.alpha, or raise regularizer.eps (the soft arctanh's distance from +-1)")
    if unfinished:
        raise RuntimeError("the shuffle target's pair permutation did not finish within its cycle-walking bound "
                           "(a 2^-40 event for this regularizer.n): change regularizer.seed")


def _epoch_totals(sums: torch.Tensor) -> list[float]:
    """The epoch's running sums, read back once at its end (the only other host sync)."""
    return sums.tolist()


def _tap_channels(model: nn.Module, layers: list[str], in_chans: int, device: torch.device) -> list[int]:
    with torch.no_grad():
        feats = model.features(torch.zeros(2, in_chans, 16, 16, device=device), layers)
    return [feats[n].shape[1] for n in layers]


# --- the loop --------------------------------------------------------------------------


@dataclass
class Learner:
    """What one run trains: the CNN, its similarity head and target, the optimizer and the
    two generators (data order + augmentation, pair sampling) that make a resume exact."""

    model: nn.Module
    forward: Callable[[torch.Tensor], torch.Tensor] | None
    precision: Precision
    head: SimilarityHead | None
    target: Target | None
    opt: torch.optim.Optimizer
    gen_data: torch.Generator
    gen_pairs: torch.Generator
    num_classes: int
    in_chans: int
    scaler: torch.amp.GradScaler | None = None
    """fp16 training's loss scaler (None otherwise)."""
    forward_taps: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None
    """pairing=shared with train.compile: the compiled ``model.forward_with_features``."""
    reg_index: torch.Tensor | None = None
    """pairing=shared: positions of the regularization images in the training split."""


def build_learner(cfg: RunConfig, data: PreparedData, device: torch.device) -> Learner:
    reg = cfg.regularizer
    train_set = data.splits.train
    torch.manual_seed(cfg.train.seed)
    num_classes, in_chans = len(train_set.classes), train_set.images.shape[1]
    model = build_model(cfg, num_classes, in_chans).to(device)
    precision = Precision.for_run(cfg.train.precision, device, cfg.train.channels_last, model)
    model = precision.prepare_model(model)
    forward = torch.compile(model) if cfg.train.compile else None
    head: SimilarityHead | None = None
    target: Target | BatchTarget | None = None
    forward_taps = reg_index = None
    if reg.active:
        channels = _tap_channels(model, reg.layers, in_chans, device)
        head = SimilarityHead(reg.layers, channels, reg.centering, reg.ema_beta, reg.train_layer_weights).to(device)
        if reg.pairing == "shared":
            if not hasattr(model, "forward_with_features"):
                raise ConfigError("regularizer.pairing", f"model {cfg.model.name!r} has no forward_with_features (one "
                                                         "pass giving logits and tap features); use pairing: pairs")
            reg_index = regularization_indices(reg, len(train_set))
            target = build_shared_target(reg, SharedImages(train_set.images, reg_index), device)
            if cfg.train.compile:
                forward_taps = torch.compile(model.forward_with_features)
        else:
            target = build_target(reg, data.reg.images, device)
    params = list(model.parameters()) + ([head.layer_logits] if head and reg.train_layer_weights else [])
    scaler = precision.grad_scaler()
    opt = precision.sgd(params, lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
    gen_data = torch.Generator().manual_seed(cfg.train.seed)
    gen_pairs = torch.Generator().manual_seed(cfg.train.seed + 1_000_003)
    return Learner(model, forward, precision, head, target, opt, gen_data, gen_pairs, num_classes, in_chans, scaler,
                   forward_taps, reg_index)


def train_epoch(
    lrn: Learner, cfg: RunConfig, epoch: int, x_train: torch.Tensor, y_train: torch.Tensor,
    x_reg: torch.Tensor | None, progress: bool = False,
) -> dict[str, float]:
    """One pass over the training set: SGD steps on the joint loss."""
    model, device, bs = lrn.model, x_train.device, cfg.train.batch_size
    model.train()
    n_train = len(x_train)
    perm = torch.randperm(n_train, generator=lrn.gen_data).to(device, non_blocking=True)
    steps = max(1, n_train // bs) if n_train >= bs else 1
    if cfg.train.max_steps_per_epoch:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    # Running sums stay on the device and the finiteness check reads back only every
    # check_finite_every steps: no host synchronisation per step (CUDA).
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # task loss, sim loss, correct
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    seen = n_pairs_seen = 0
    t0 = time.perf_counter()
    for step in range(steps):
        idx = perm[step * bs : (step + 1) * bs]
        x = to_float(x_train[idx])
        if cfg.data.augment:
            x = augment_batch(x, cfg.data.crop_padding, cfg.data.hflip, lrn.gen_data)
        x, y = lrn.precision.layout(x), y_train[idx]
        loss, loss_task, loss_sim, logits, n_pairs = joint_loss(
            model, lrn.head, lrn.target, cfg, x, y, x_reg, lrn.gen_pairs, lrn.precision, lrn.forward,
            index=idx, forward_taps=lrn.forward_taps,
        )
        lrn.opt.zero_grad(set_to_none=True)
        if lrn.scaler is None:
            loss.backward()
            lrn.opt.step()
        else:  # fp16: scaled loss, a skipped step on non-finite gradients, the scale adapted
            lrn.scaler.scale(loss).backward()
            lrn.scaler.step(lrn.opt)
            lrn.scaler.update()
        with torch.no_grad():
            first_bad = _note_bad(first_bad, step, loss, loss_task, loss_sim)
            sums += torch.stack([loss_task * len(y), loss_sim * len(y), (logits.argmax(1) == y).sum()]).double()
        seen += len(y)
        n_pairs_seen += n_pairs
        if (step + 1) % cfg.train.check_finite_every == 0 or step + 1 == steps:
            _check_finite(first_bad, lrn.target.incomplete() if lrn.target is not None else None, epoch)
        if progress and (step + 1) % max(1, steps // 10) == 0:
            print(f"  epoch {epoch + 1} step {step + 1}/{steps} loss {loss.item():.4f}", file=sys.stderr)
    task_sum, sim_sum, correct = _epoch_totals(sums)
    epoch_s = time.perf_counter() - t0
    return {"train_loss": task_sum / seen, "sim_loss": sim_sum / seen, "train_acc": correct / seen,
            "images_per_s": seen / epoch_s, "pairs_per_s": n_pairs_seen / epoch_s, "epoch_s": epoch_s,
            "pairs_per_step": n_pairs_seen / steps}


def train(
    cfg: RunConfig,
    out_dir: str | os.PathLike,
    callback: Callable[[dict[str, Any]], None] | None = None,
    resume_from: str | os.PathLike | None = None,
    data: PreparedData | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train one model; checkpoints and metrics go to ``out_dir``.

    ``resume_from`` (a checkpoint_last.pt) continues exactly where it stopped;
    ``callback`` gets each epoch's metrics (an exception there stops the run).
    ``out_dir`` is made only once the run's parts are built, so a refused run (a bad
    recording or weights file) leaves no folder behind. train.deterministic's flags (or
    cuDNN autotuning) hold for the whole run, set before the model is built, and the
    previous process-wide flags come back afterwards.
    """
    t_start = time.perf_counter()
    cfg.validate()
    device = resolve_device(cfg.train.device)
    with determinism(cfg.train.deterministic, device):
        return _train(cfg, Path(out_dir), device, t_start, callback, resume_from, data, progress)


def _train(
    cfg: RunConfig, out: Path, device: torch.device, t_start: float,
    callback: Callable[[dict[str, Any]], None] | None, resume_from: str | os.PathLike | None,
    data: PreparedData | None, progress: bool,
) -> TrainResult:
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    data = data or prepare_data(cfg)
    lrn = build_learner(cfg, data, device)
    out.mkdir(parents=True, exist_ok=True)
    model, head, reg = lrn.model, lrn.head, cfg.regularizer

    start_epoch, best_val, history, init_sim = 0, -1.0, [], None
    if resume_from is not None:
        start_epoch, best_val, history, init_sim = restore_trainer_state(
            resume_from, device, model, lrn.opt, head, lrn.gen_data, lrn.gen_pairs, lrn.scaler)
        # The metrics file may have run ahead of the checkpoint we resume from: rewrite it.
        (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in history))
    elif (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()

    # Keep the decoded uint8 images on the device: one copy, no per-step host transfer.
    x_train, y_train = data.splits.train.images.to(device), data.splits.train.labels.to(device)
    x_reg = data.reg.images.to(device) if reg.active else None
    if init_sim is None and head is not None:
        with ieee_fp32():
            init_sim = fixed_pair_similarity_loss(model, head, lrn.target, x_reg, cfg, reg_index=lrn.reg_index)
    init_sim = init_sim or 0.0
    last_path, best_path = out / "checkpoint_last.pt", out / "checkpoint_best.pt"
    (out / "config.yaml").write_text(cfg.to_yaml())

    for epoch in range(start_epoch, cfg.train.epochs):
        lr = learning_rate(cfg, epoch)
        for g in lrn.opt.param_groups:
            g["lr"] = lr
        with lrn.precision.math():  # IEEE fp32 for fp32 training, the fast modes for mixed precision
            stats = train_epoch(lrn, cfg, epoch, x_train, y_train, x_reg, progress)
            modes = fp32_modes(device.type)
        model.eval()
        with ieee_fp32():  # validation is evaluation: IEEE fp32 whatever the training precision
            val_acc = accuracy(model, data.splits.val.images, data.splits.val.labels, cfg.train.eval_batch_size, device)
            val_sim = (fixed_pair_similarity_loss(model, head, lrn.target, x_reg, cfg, reg_index=lrn.reg_index)
                       if head is not None else 0.0)
        # Ties keep the later epoch: on a 1 % validation split equal accuracies are common,
        # and the later model has trained longer.
        improved = math.isnan(val_acc) or val_acc >= best_val
        if improved:
            best_val = val_acc if not math.isnan(val_acc) else best_val
        metrics: dict[str, Any] = {
            "epoch": epoch + 1, "lr": lr, "train_loss": stats["train_loss"], "sim_loss": stats["sim_loss"],
            "val_sim_loss": val_sim, "train_acc": stats["train_acc"], "val_acc": val_acc, "best_val_acc": best_val,
            "images_per_s": stats["images_per_s"], "pairs_per_s": stats["pairs_per_s"], "epoch_s": stats["epoch_s"],
            "pairing": reg.pairing if head is not None else "none", "pairs_per_step": stats["pairs_per_step"],
            "precision": lrn.precision.name, "channels_last": lrn.precision.channels_last, **modes,
        }
        if head is not None:
            metrics.update({f"layer_weight_{n}": w for n, w in zip(reg.layers, head.layer_weights().tolist())})
        history.append(metrics)
        state = trainer_state(cfg, model, lrn.opt, head, lrn.gen_data, lrn.gen_pairs, lrn.num_classes,
                              lrn.in_chans, epoch + 1, lr, best_val, init_sim, history, lrn.scaler)
        save_checkpoint(last_path, state)
        if improved:
            save_checkpoint(best_path, state)
        metrics["checkpoint"] = str(last_path)
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if callback is not None:
            callback(dict(metrics))

    chosen = last_path if cfg.train.evaluate_checkpoint == "last" or not best_path.exists() else best_path
    evaluated = load_checkpoint(chosen, map_location=device)
    # Evaluation runs in fp32 on a contiguous model, whatever the training precision and layout.
    model = model.to(memory_format=torch.contiguous_format)
    model.load_state_dict(evaluated["model"])
    model.eval()
    return TrainResult(
        model=model, history=history, best_val_acc=best_val, out_dir=out, best_checkpoint=best_path,
        evaluated_checkpoint=chosen, evaluated_epoch=int(evaluated["epoch"]),
        evaluated_layer_weights=layer_weights_of(evaluated, reg.layers) if head is not None else {},
        last_checkpoint=last_path, wall_s=time.perf_counter() - t_start, initial_val_sim_loss=init_sim,
        test=data.splits.test,
    )


# --- CLI ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from neuroreg.config import apply_overrides

    p = argparse.ArgumentParser(prog="python -m neuroreg.train", description="Train one jointly regularized model.")
    p.add_argument("--config", help="run config YAML (omitted: all defaults, a digits run)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field, e.g. regularizer.alpha=4")
    p.add_argument("--out", required=True, help="output folder (checkpoints, metrics.jsonl, config.yaml)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint_last.pt if present")
    p.add_argument("--evaluate", action="store_true", help="run the evaluation suites of the config at the end")
    a = p.parse_args(argv)
    try:
        if a.config:
            cfg = RunConfig.from_yaml(a.config, a.set)
        else:
            cfg = RunConfig.from_dict(apply_overrides({}, a.set))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out)
    try:
        check_output_folder(out, "--out")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    last = out / "checkpoint_last.pt"
    resume = last if a.resume and last.exists() else None
    if not a.resume and last.exists():
        print(f"error: {out} already holds a run; pass --resume to continue it or choose another --out", file=sys.stderr)
        return 2

    def show(m: dict[str, Any]) -> None:
        print(
            f"epoch {m['epoch']:3d}  lr {m['lr']:.4g}  loss {m['train_loss']:.4f}  sim {m['sim_loss']:.4f}  "
            f"train {m['train_acc']:.4f}  val {m['val_acc']:.4f}  {m['images_per_s']:.0f} img/s",
            flush=True,
        )

    try:
        res = train(cfg, out, callback=show, resume_from=resume)
    except (ConfigError, TrainingDiverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"best validation accuracy {res.best_val_acc:.4f}; checkpoints in {out} ({res.wall_s:.1f} s)")
    if a.evaluate:
        from neuroreg.evaluate.runner import evaluate_model

        summary = evaluate_model(res.model, cfg, res.test, out / "evaluation", next(res.model.parameters()).device)
        print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
