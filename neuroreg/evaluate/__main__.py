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
    p.add_argument("--data-root", help="data root (data.root; default $NEUROREG_DATA_ROOT)")
    p.add_argument("--surrogate", help="surrogate checkpoint of the transfer suite (evaluation.surrogate)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set evaluation.ddn_steps=100 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from neuroreg.checkpoint import load_model
    from neuroreg.config import ConfigError, RunConfig, apply_overrides

    try:
        if args.n_images is not None and args.n_images < 1:
            raise ConfigError("--n-images", "must be >= 1")
        model, cfg = load_model(args.checkpoint, device=args.device)
        d = cfg.to_dict()
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
        cfg.validate(check_files=True)

        from neuroreg.evaluate.runner import check_inputs, evaluate_model, rgb_test_set

        check_inputs(cfg, None)
        from neuroreg.data import load_dataset

        test = load_dataset(cfg.data, train=False)
        test_rgb = rgb_test_set(cfg, test)[0] if "corruptions" in cfg.evaluation.suites else None
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = evaluate_model(model, cfg, test, args.out, args.device, test_rgb=test_rgb)
    flat = {k: v for k, v in summary.items() if k != "files"}
    print(json.dumps(flat, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
