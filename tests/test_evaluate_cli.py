"""``python -m neuroreg.evaluate`` on a checkpoint made in the test (digits, tiny ResNet18)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from neuroreg.config import RunConfig
from neuroreg.data import load_dataset, to_float
from neuroreg.evaluate.__main__ import main
from neuroreg.evaluate.runner import read_jsonl
from neuroreg.train import train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.set_num_threads(1)  # module fixtures run before conftest's per-test thread fixture
    cfg = RunConfig.from_dict({
        "data": {"name": "digits", "image_size": 16, "val_fraction": 0.1},
        "model": {"width": 4},
        "optim": {"lr": 0.05, "schedule": "constant"},
        "train": {"epochs": 2, "batch_size": 64, "seed": 0, "device": "cpu"},
    })
    res = train(cfg, tmp_path_factory.mktemp("run"))  # the real trainer writes the checkpoint
    return res.best_checkpoint, res.model, cfg


FAST = [
    "--set", "evaluation.attacks_l2=[ddn]", "--set", "evaluation.attacks_linf=[fmn_linf]",
    "--set", "evaluation.ddn_steps=20", "--set", "evaluation.fmn_steps=20",
    "--set", "evaluation.noise_levels={gaussian: [0, 0.3, 1.0], uniform: [0, 0.5], salt_pepper: [0, 0.3]}",
    "--set", "evaluation.corruptions=[gaussian_noise, contrast]", "--set", "evaluation.severities=[1, 5]",
    "--set", "evaluation.corruption_n_images=30", "--set", "evaluation.transfer_epsilons=[0, 0.1, 0.3]",
    "--set", "evaluation.boundary_n_images=3", "--set", "evaluation.boundary_steps=30",
    "--set", "evaluation.hybrid_pairs=10", "--no-progress",
]


@pytest.mark.slow
def test_cli_writes_all_records(checkpoint, tmp_path, capsys):
    path, model, cfg = checkpoint
    out = tmp_path / "evaluation"
    suites = ["clean", "noise", "adversarial", "transfer", "boundary", "corruptions", "frequency"]
    rc = main(["--checkpoint", str(path), "--out", str(out), "--suites", *suites, "--n-images", "6",
               "--surrogate", str(path), *FAST])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads(capsys.readouterr().out)["clean_acc"] == summary["clean_acc"]

    test = load_dataset(cfg.data, train=False)
    x, y = to_float(test.images), test.labels
    with torch.no_grad():
        pred = model(x).argmax(1)
    clean = float((pred == y).double().mean())
    assert summary["clean_acc"] == pytest.approx(clean, abs=1e-12)
    assert clean > 0.3, "the test model should have learned something"
    assert read_jsonl(out / "clean.jsonl") == [{"suite": "clean", "accuracy": summary["clean_acc"], "n": len(test)}]

    noise = read_jsonl(out / "noise.jsonl")
    assert len(noise) == 7 and {r["noise"] for r in noise} == {"gaussian", "uniform", "salt_pepper"}
    assert all(r["accuracy"] == pytest.approx(clean) for r in noise if r["level"] == 0)
    assert summary["noise_acc_gaussian_0.3"] == [r for r in noise if r["noise"] == "gaussian"][1]["accuracy"]

    adv = read_jsonl(out / "adversarial.jsonl")
    assert len(adv) == 12 and {r["norm"] for r in adv} == {"l2", "linf"}
    for r in adv:
        assert set(r) == {"norm", "image", "label", "distance", "attack"}
        assert r["label"] == int(y[r["image"]])
        assert (r["distance"] == 0) == bool(pred[r["image"]] != y[r["image"]])
        assert r["distance"] == 0 or r["attack"] != "misclassified"
    summ = read_jsonl(out / "adversarial_summary.jsonl")
    assert {s["norm"] for s in summ} == {"l2", "linf"}
    for s in summ:
        for key in ("median", "q25", "q75", "mean_finite", "success_rate", "n", "n_unbroken", "seconds"):
            assert key in s
        assert s["n"] == 6 and summary[f"median_{s['norm']}"] == s["median"]
    l2 = {r["image"]: r["distance"] for r in adv if r["norm"] == "l2"}
    linf = {r["image"]: r["distance"] for r in adv if r["norm"] == "linf"}
    for i in l2:  # the invariant, with cross-norm pooling on by default
        if math.isfinite(l2[i]) and math.isfinite(linf[i]):
            assert l2[i] / math.sqrt(16 * 16) <= linf[i] * (1 + 1e-6) and linf[i] <= l2[i] * (1 + 1e-6)

    transfer = read_jsonl(out / "transfer.jsonl")
    assert [r["epsilon"] for r in transfer] == [0, 0.1, 0.3]
    # surrogate = target: at epsilon 0 both are the clean accuracy of the 6 attack images
    assert transfer[0]["accuracy"] == transfer[0]["surrogate_accuracy"]
    assert transfer[-1]["surrogate_accuracy"] <= transfer[0]["surrogate_accuracy"]

    boundary = read_jsonl(out / "boundary.jsonl")
    rates = [r["success_rate"] for r in boundary]
    assert rates == sorted(rates) and all(r["n"] == 3 for r in boundary)

    corr = read_jsonl(out / "corruptions.jsonl")
    assert [(r["corruption"], r["severity"], r["frequency"]) for r in corr] == [
        ("gaussian_noise", 1, "high"), ("gaussian_noise", 5, "high"), ("contrast", 1, "low"), ("contrast", 5, "low")]
    assert summary["corruption_acc_mean"] == pytest.approx(sum(r["accuracy"] for r in corr) / 4)
    assert (out / "frequency.jsonl").is_file()


def test_cli_rejects_bad_input_before_work(checkpoint, tmp_path, capsys):
    path, _, _ = checkpoint
    out = tmp_path / "e"
    assert main(["--checkpoint", str(path), "--out", str(out), "--set", "evaluation.suites=[bogus]"]) == 2
    assert "evaluation.suites" in capsys.readouterr().err
    assert main(["--checkpoint", str(path), "--out", str(out), "--suites", "transfer"]) == 2
    assert "evaluation.surrogate" in capsys.readouterr().err
    assert main(["--checkpoint", str(path), "--out", str(out), "--set", "evaluation.noise_levels={gaussian: [-1]}"]) == 2
    assert "evaluation.noise_levels" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2
    assert not out.exists(), "nothing may be written when the input is bad"
