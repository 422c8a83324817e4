"""CLI: ``python -m neuroreg.evaluate --checkpoint PATH --out DIR [--suites ...] [--set evaluation.x=y]``."""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def build_parser() -> argparse.ArgumentParser:
    from neuroreg.evaluate.suites import suite_names

    p = argparse.ArgumentParser(prog="python -m neuroreg.evaluate", description=__doc__.replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="trainer checkpoint (.pt) to evaluate")
    p.add_argument("--out", required=True, help="folder for the records and summary.json")
    p.add_argument("--suites", nargs="+", choices=suite_names(), help="suites to run (default: the checkpoint's evaluation.suites)")
    p.add_argument("--n-images", type=int, help="test images of the attack suites (evaluation.n_images)")
    p.add_argument("--data-root", help="data root (data.root; default $NEUROREG_DATA_ROOT; never the checkpoint's)")
    p.add_argument("--surrogate", help="surrogate checkpoint of the transfer suite (evaluation.surrogate)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set evaluation.ddn_steps=100 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


# The data section of a checkpoint describes the model's input (which set, its preprocessing),
# but where data lives and whether it may be downloaded are the evaluating user's to say:
# these fields are reset, then taken from --data-root, $NEUROREG_DATA_ROOT and --set only.
_LOCATION_FIELDS = ("root", "download", "train_dir", "test_dir")


def _trusted_config(stored: dict) -> dict:
    """The stored config with every field that names a place or permits a download reset."""
    from neuroreg.config import DataConfig

    fresh = DataConfig()
    d = dict(stored)
    d["data"] = {**stored["data"], **{k: getattr(fresh, k) for k in _LOCATION_FIELDS}}
    d["evaluation"] = {**stored["evaluation"], "surrogate": None}
    return d


def check_device(text: str):
    """--device: cpu, cuda or cuda:N of a GPU that is there."""
    import torch

    from neuroreg.config import ConfigError

    ok = text == "cpu" or text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit())
    if not ok:
        raise ConfigError("--device", f"{text!r} is not cpu, cuda or cuda:N")
    if text != "cpu":
        index = int(text[5:]) if ":" in text else 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ConfigError("--device", f"{text} is not available here ({torch.cuda.device_count()} CUDA devices); "
                                          "use --device cpu")
    return torch.device(text)


def check_fits(model, test, cfg, what: str = "the model") -> None:
    """Refuse test data the model cannot meaningfully classify: channels or class count differ."""
    from neuroreg.config import ConfigError

    c = int(test.images.shape[1])
    if c != model.in_chans:
        raise ConfigError("data.grayscale", f"the {cfg.data.name} test images have {c} channel(s) but {what} takes "
                                            f"{model.in_chans}; set data.grayscale={str(model.in_chans == 1).lower()}")
    n = len(test.classes) if test.classes else (int(test.labels.max()) + 1 if len(test) else 0)
    if n != model.num_classes or (len(test) and int(test.labels.max()) >= model.num_classes):
        raise ConfigError("data.name", f"the {cfg.data.name} test set has {n} classes but {what} was trained on "
                                       f"{model.num_classes}; evaluate it on the data set it was trained on "
                                       "(--set data.name=..., --data-root)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from neuroreg.checkpoint import load_model
    from neuroreg.config import ConfigError, RunConfig, apply_overrides, validate_data
    from neuroreg.paths import check_output_folder

    try:
        if args.n_images is not None and args.n_images < 1:
            raise ConfigError("--n-images", "must be >= 1")
        device = check_device(args.device)
        # Validated, shapes compared before allocation, finite weights: see checkpoint.load_model.
        model, stored = load_model(args.checkpoint, device=device)
        d = _trusted_config(stored.to_dict())
        sets = list(args.overrides)
        if args.suites:
            sets.append(f"evaluation.suites={json.dumps(args.suites)}")
        if args.n_images is not None:
            sets.append(f"evaluation.n_images={args.n_images}")
        if args.data_root:
            sets.append(f"data.root={json.dumps(args.data_root)}")
        if args.surrogate:
            sets.append(f"evaluation.surrogate={json.dumps(args.surrogate)}")
        if args.no_progress:
            sets.append("evaluation.progress=false")
        cfg = RunConfig.from_dict(apply_overrides(d, sets), validate=False)
        if cfg.data.name not in ("digits", "synthetic") and not cfg.data.root and not os.environ.get("NEUROREG_DATA_ROOT"):
            raise ConfigError("--data-root", f"the checkpoint's model was trained on {cfg.data.name!r}: give its data "
                                             "root with --data-root or $NEUROREG_DATA_ROOT (the location stored in a "
                                             "checkpoint is never used)")
        cfg.validate(check_files=False)  # the regularizer's files are the training's, not needed here
        validate_data(cfg.data, "data", check_files=True)
        check_output_folder(args.out, "--out")

        from neuroreg.evaluate.runner import check_inputs, evaluate_model, rgb_test_set

        check_inputs(cfg, None)
        surrogate = None
        if cfg.evaluation.surrogate and "transfer" in cfg.evaluation.suites:
            surrogate, _ = load_model(cfg.evaluation.surrogate, device=device)
        from neuroreg.data import load_dataset

        test = load_dataset(cfg.data, train=False)
        check_fits(model, test, cfg)
        if surrogate is not None:
            check_fits(surrogate, test, cfg, "the surrogate (--surrogate)")
        test_rgb = rgb_test_set(cfg, test)[0] if "corruptions" in cfg.evaluation.suites else None
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = evaluate_model(model, cfg, test, args.out, device, surrogate=surrogate, test_rgb=test_rgb)
    flat = {k: v for k, v in summary.items() if k != "files"}
    print(json.dumps(flat, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
