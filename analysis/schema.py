"""The tables the analysis writes: names, key columns, required columns, schema version.

The full description for users is ``analysis/SCHEMA.md``; this module is what the code
checks against. Bump ``SCHEMA_VERSION`` whenever a column changes meaning or name.
"""

from __future__ import annotations

from neuroreg.evaluate.suites import SUITES

SCHEMA_VERSION = 1
"""Stored in every Parquet file's key-value metadata under ``neuroreg.schema_version``."""

META_VERSION = b"neuroreg.schema_version"
META_TABLE = b"neuroreg.table"
META_SWEEP = b"neuroreg.sweep"

KEY = ("sweep", "trial_id")
"""Every table starts with these two columns; (sweep, trial_id) joins any table to ``trials``."""

RECORD_FILES = {stem: f"{stem}.jsonl" for suite in SUITES for stem in suite.records}
"""Table name -> record file in a trial's evaluation/ folder: every registered suite's
declared records (neuroreg.evaluate.suites), so a new suite gets its table and SQL view."""

TABLES = ("trials", "epochs", *RECORD_FILES, "provenance", "decisions")

REQUIRED = {
    "trials": (
        "sweep", "trial_id", "status", "error", "trial_dir", "checkpoint",
        "wall_time_s", "iterations", "n_epochs", "arm", "reg_dataset",
    ),
    "epochs": ("sweep", "trial_id", "epoch"),
    "clean": ("sweep", "trial_id", "accuracy"),
    "noise": ("sweep", "trial_id", "noise", "level", "accuracy"),
    "adversarial": ("sweep", "trial_id", "norm", "image", "distance", "attack"),
    "adversarial_summary": ("sweep", "trial_id", "norm", "median"),
    "transfer": ("sweep", "trial_id", "epsilon", "accuracy"),
    "boundary": ("sweep", "trial_id", "budget", "success_rate"),
    "corruptions": ("sweep", "trial_id", "corruption", "severity", "accuracy"),
    "frequency": ("sweep", "trial_id", "kind"),
    # One row per sweep, joinable on sweep alone (analysis/provenance_table.py).
    "provenance": ("sweep", "torch", "git_commit", "cpu_model", "precision", "device_kind"),
    # A sequential sweep's looks: one row per look, declared hypothesis and arm.
    "decisions": ("sweep", "arm", "baseline_arm", "metric", "n", "decision"),
}
"""Columns each table always has (more may follow: config fields, metrics, record fields)."""

GATHERED_TRIAL_COLUMNS = frozenset(REQUIRED["trials"]) | {
    "condition", "baseline", "arm_key", "condition_key", "node_id", "node_host", "node_ip", "node_ids", "round",
}
"""Columns gather computes for every trial (keys, status, labels, node, round): no trial file
may set them (analysis.trial_keys), and they are never metrics (analysis.metric_names)."""
for _table in RECORD_FILES:  # a suite registered later: its records carry at least the key
    REQUIRED.setdefault(_table, KEY)

SORT = {
    "provenance": ("sweep",),
    "decisions": ("sweep", "arm", "metric", "n"),
    "trials": ("sweep", "trial_id"),
    "epochs": ("sweep", "trial_id", "epoch"),
}
"""Row order of a table (record tables keep file order within a trial, trials sorted by id)."""

RAY_INTERNAL = frozenset({
    # Keys Ray adds to every reported result; kept out of the metric columns.
    "timestamp", "checkpoint_dir_name", "should_checkpoint", "done", "training_iteration",
    "trial_id", "date", "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip",
    "config", "time_since_restore", "iterations_since_restore", "experiment_tag",
})

ALIASES = {
    # short names accepted by analysis.query (where, by, key=value) for config columns
    "alpha": "regularizer.alpha",
    "th": "regularizer.th",
    "target": "regularizer.target",
    "layers": "regularizer.layers",
    "loss": "regularizer.loss",
    "seed": "train.seed",
    "epochs": "train.epochs",
    "model": "model.name",
    "width": "model.width",
    "dataset": "data.name",
    "lr": "optim.lr",
}

SEED_COLUMNS = ("train.seed",)
"""Config columns that index repetitions; statistics 'over seeds' average across them."""

STATUSES = ("TERMINATED", "ERROR", "RUNNING", "PENDING", "PAUSED", "UNKNOWN")
