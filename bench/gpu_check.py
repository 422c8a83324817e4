"""One command for whoever gets a GPU: does the GPU path of neuroreg work on this machine?

    python bench/gpu_check.py [--quick] [--skip sweep,throughput]     # or: make gpu-check

Checks, each a row of the closing table (PASS / FAIL and what was measured):

- ``cuda``: torch sees the GPU, the driver and the GPU architecture fit the wheel
  (``sweep.trainable.cuda_problem``, what a sweep trial checks before it trains);
- ``ieee conv``: a convolution inside ``precision.ieee_fp32()`` matches float64 to IEEE fp32
  accuracy (TF32 would be ~1e-3 off), and the TF32 settings come back afterwards;
- ``cuda tests``: the test suite's CUDA tests (``pytest -k cuda``), which skip without a GPU;
- ``epoch <precision>``: one short epoch per training precision on CUDA against fp32
  (training loss and validation accuracy within tolerance; the record names the fp32 modes);
- ``syncs <target>``: the CUDA counterpart of tests/test_syncdetect.py: host syncs counted
  by ``torch.cuda.set_sync_debug_mode("warn")`` must not grow with the number of steps;
- ``sweep 4 x 0.25 GPU``: 4 trials packed onto one GPU through ``sweep.run``, all on CUDA;
- ``throughput``: bench/train_throughput.py on CUDA (its own table is printed above).

Exit codes: 0 every check passed, 1 some check failed, 2 no usable CUDA here (nothing run).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neuroreg.config import RunConfig  # noqa: E402
from neuroreg.precision import PRECISIONS, fp32_settings, ieee_fp32  # noqa: E402
from neuroreg.train import prepare_data, train  # noqa: E402

Row = tuple[str, bool, str]


def tiny(device: str = "cuda", target: str = "pixel_th", reg_over: dict | None = None, augment: bool = False,
         **train_over) -> RunConfig:
    reg = {"target": target, "alpha": 1.0, "th": 0.5, "n": 200, "layers": ["conv1", "conv5", "conv9"],
           "shuffle_of": "pixel_th", **(reg_over or {})}
    return RunConfig.from_dict({
        "data": {"name": "digits", "image_size": 32, "val_fraction": 0.15, "augment": augment, "crop_padding": 2},
        "model": {"width": 16},
        "regularizer": reg,
        "optim": {"lr": 0.05, "schedule": "constant"},
        "train": {"epochs": 1, "batch_size": 64, "seed": 0, "device": device, "max_steps_per_epoch": 20,
                  **train_over},
    })


def check_cuda() -> list[Row]:
    from sweep.trainable import cuda_problem

    problem = cuda_problem()
    if problem:
        return [("cuda", False, problem)]
    cap = torch.cuda.get_device_capability()
    return [("cuda", True, f"{torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]}), torch {torch.__version__}, "
                           f"CUDA {torch.version.cuda}, bf16 {torch.cuda.is_bf16_supported(including_emulation=False)}")]


def check_ieee_conv() -> list[Row]:
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(8, 64, 32, 32, generator=g), torch.randn(64, 64, 3, 3, generator=g)
    ref = torch.nn.functional.conv2d(x.double(), w.double(), padding=1)
    before = fp32_settings()

    def err() -> float:
        out = torch.nn.functional.conv2d(x.cuda(), w.cuda(), padding=1).double().cpu()
        return float((out - ref).abs().max() / ref.abs().max())

    with ieee_fp32():
        ieee = err()
    default = err()
    ok = ieee < 1e-5 and fp32_settings() == before
    return [("ieee conv", ok, f"max rel. error vs float64: ieee_fp32 {ieee:.1e}, torch default {default:.1e} "
                              f"(TF32 ~1e-3); settings restored: {fp32_settings() == before}")]


def check_cuda_tests() -> list[Row]:
    files = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests").glob("test_*.py"))]
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-k", "cuda", "-p", "no:cacheprovider", *files],
                       cwd=ROOT, capture_output=True, text=True, timeout=1800)
    last = (p.stdout.strip().splitlines() or ["no output"])[-1]
    print(p.stdout[-4000:], p.stderr[-2000:], sep="\n")
    return [("cuda tests", p.returncode == 0 and " passed" in last, last)]


def check_precisions(data) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        ref = train(tiny(precision="fp32"), Path(tmp) / "fp32", data=data).history[-1]
        rows = [("epoch fp32", ref["fp32_conv"] == "ieee" and ref["fp32_matmul"] == "ieee",
                 f"loss {ref['train_loss']:.4f}, val {ref['val_acc']:.4f}, conv {ref['fp32_conv']}, "
                 f"matmul {ref['fp32_matmul']}")]
        for prec in [p for p in PRECISIONS if p not in ("fp32",)]:
            h = train(tiny(precision=prec), Path(tmp) / prec, data=data).history[-1]
            d_loss, d_acc = abs(h["train_loss"] - ref["train_loss"]), abs(h["val_acc"] - ref["val_acc"])
            ok = d_loss < 0.1 * max(1.0, abs(ref["train_loss"])) and d_acc < 0.1
            rows.append((f"epoch {prec}", ok, f"ran {h['precision']}: loss {h['train_loss']:.4f} (d {d_loss:.3f}), "
                                              f"val {h['val_acc']:.4f} (d {d_acc:.3f}), conv {h['fp32_conv']}, "
                                              f"{h['images_per_s']:.0f} img/s"))
    return rows


def check_syncs(targets: list[str], data) -> list[Row]:
    import torchvision

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = {"neural": {"neural_responses": f"{tmp}/r.npy"},
                 "features": {"features_weights": f"{tmp}/w.pt", "features_arch": "squeezenet1_1",
                              "features_layer": "features.3"}}
        np.save(f"{tmp}/r.npy", np.random.default_rng(0).poisson(3.0, (3, 200, 25)).astype(np.float32))
        torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), f"{tmp}/w.pt")
        for target in targets:
            for augment in (False, True):
                counts = []
                for steps in (4, 12):
                    cfg = tiny(target=target, reg_over=files.get(target), augment=augment,
                               max_steps_per_epoch=steps, check_finite_every=1000)
                    torch.cuda.set_sync_debug_mode("warn")
                    try:
                        with warnings.catch_warnings(record=True) as w:
                            warnings.simplefilter("always")
                            train(cfg, Path(tmp) / f"{target}{augment}{steps}", data=data)
                    finally:
                        torch.cuda.set_sync_debug_mode("default")
                    counts.append(sum("synchroniz" in str(x.message) for x in w))
                per_step = (counts[1] - counts[0]) / 8
                rows.append((f"syncs {target}{' +aug' if augment else ''}", counts[1] == counts[0],
                             f"{counts[0]} syncs in 4 steps, {counts[1]} in 12: {per_step:g} per step"))
    return rows


def check_packed_sweep() -> list[Row]:
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        space = Path(tmp) / "gpu.yaml"
        base = tiny(device="auto", epochs=2).to_dict()
        base["evaluation"] = {"suites": ["clean"]}
        space.write_text(yaml.safe_dump({"name": "gpu", "base": base, "baseline": False,
                                         "search": {"algorithm": "grid"},
                                         "space": {"regularizer.alpha": {"grid": [0.5, 1.0, 2.0, 4.0]}}}))
        t0 = time.time()
        p = subprocess.run([sys.executable, "-m", "sweep.run", "--space", str(space), "--storage", f"{tmp}/res",
                            "--name", "gpu", "--gpus-per-trial", "0.25", "--cpus-per-trial", "1", "--quiet",
                            "--no-dashboard"], cwd=ROOT, capture_output=True, text=True, timeout=1800)
        if p.returncode != 0:
            print(p.stdout[-3000:], p.stderr[-3000:], sep="\n")
            return [("sweep 4 x 0.25 GPU", False, f"sweep.run exit {p.returncode}")]
        import pandas as pd

        trials = pd.read_parquet(Path(tmp) / "tables" / "trials" / "gpu.parquet")
        devices = sorted(set(trials["device"]))
        ok = len(trials) == 4 and all(d.startswith("cuda") for d in devices)
        return [("sweep 4 x 0.25 GPU", ok, f"{len(trials)} trials on {devices} in {time.time() - t0:.0f} s")]


def check_throughput() -> list[Row]:
    p = subprocess.run([sys.executable, "bench/train_throughput.py", "--device", "cuda", "--widths", "16", "64"],
                       cwd=ROOT, capture_output=True, text=True, timeout=1800)
    print(p.stdout[-6000:], p.stderr[-2000:] if p.returncode else "", sep="\n")
    return [("throughput", p.returncode == 0, "table above" if p.returncode == 0 else f"exit {p.returncode}")]


def main(argv: list[str] | None = None) -> int:
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("--skip", default="", help="comma list of checks to skip: tests,precision,syncs,sweep,throughput")
    a.add_argument("--quick", action="store_true", help="sync check on pixel_th and shuffle only")
    args = a.parse_args(argv)
    if not torch.cuda.is_available():
        from sweep.trainable import cuda_problem

        print(f"gpu_check: cannot run here, CUDA is not usable: {cuda_problem() or 'no CUDA device'}", file=sys.stderr)
        return 2
    skip = set(filter(None, args.skip.split(",")))
    data = prepare_data(tiny())
    targets = ["pixel_th", "shuffle"] if args.quick else ["pixel", "pixel_th", "shuffle", "neural", "features"]
    checks: list[tuple[str, Callable[[], list[Row]]]] = [
        ("cuda", check_cuda), ("ieee", check_ieee_conv), ("tests", check_cuda_tests),
        ("precision", lambda: check_precisions(data)), ("syncs", lambda: check_syncs(targets, data)),
        ("sweep", check_packed_sweep), ("throughput", check_throughput),
    ]
    rows: list[Row] = []
    for name, fn in checks:
        if name in skip:
            continue
        t0 = time.time()
        try:
            got = fn()
        except Exception as e:  # a crashing check is a failed row, the others still run
            traceback.print_exc()
            got = [(name, False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")]
        print(f"[{name}] {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
        rows.extend(got)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'check':<{width}}  result  detail")
    for check, ok, detail in rows:
        print(f"{check:<{width}}  {'PASS' if ok else 'FAIL':<6}  {detail}")
    failed = [r[0] for r in rows if not r[1]]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} checks passed" + (f"; failed: {', '.join(failed)}" if failed
                                                                       else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
