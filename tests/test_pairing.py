"""regularizer.pairing: shared (issue 24): similarity pairs from the classification batch itself."""

from __future__ import annotations

import copy

import pytest
import torch

from neuroreg.checkpoint import collapse_summary
from neuroreg.config import ConfigError, RunConfig
from neuroreg.data import load_regularization_set, to_float
from neuroreg.pairperm import pair_index
from neuroreg.precision import Precision
from neuroreg.syncdetect import SyncDetector
from neuroreg.targets import (
    PixelIndexTarget,
    SharedImages,
    ThresholdTarget,
    build_shared_target,
    build_target,
    pixel_mean,
)
from neuroreg.train import (
    build_learner,
    fixed_pair_similarity_loss,
    joint_loss,
    main,
    prepare_data,
    regularization_indices,
    shared_pairs,
    train,
    train_epoch,
)
from sweep.spec import parse_spec

CPU = torch.device("cpu")
LAYERS = ["conv1", "conv5", "conv9"]


def cfg_of(**reg) -> RunConfig:
    train_over = reg.pop("train", {})
    return RunConfig.from_dict({
        "data": {"name": "digits", "image_size": 16, "val_fraction": 0.15},
        "model": {"width": 4},
        "regularizer": {"target": "pixel_th", "alpha": 1.0, "th": 0.3, "n": 200, "layers": LAYERS, **reg},
        "optim": {"lr": 0.05, "schedule": "constant"},
        "train": {"epochs": 1, "batch_size": 16, "seed": 0, "device": "cpu", "precision": "fp32",
                  "max_steps_per_epoch": 3, **train_over},
    })


@pytest.fixture(scope="module")
def data():
    return prepare_data(cfg_of(pairing="shared"))


def d(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return torch.log(1 + x + eps) - torch.log(1 - x + eps)


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=1, keepdim=True)


# --- the loss is the pairwise similarity of the batch, by hand -------------------------------


@pytest.mark.parametrize("loss", ["atanh", "mse"])
def test_shared_loss_is_the_batch_similarity_computed_by_hand(data, loss):
    cfg = cfg_of(pairing="shared", n_pairs=None, loss=loss)
    lrn = build_learner(cfg, data, CPU)
    head0 = copy.deepcopy(lrn.head)
    train_images = data.splits.train.images
    index = torch.arange(40, 56)
    x = to_float(train_images[index])
    y = data.splits.train.labels[index]
    total, task, sim, logits, n = joint_loss(lrn.model, lrn.head, lrn.target, cfg, x, y, None, lrn.gen_pairs,
                                             index=index)
    assert n == 16 * 15 // 2
    # By hand, in fp64: features of the same batch (train mode: batch statistics), each layer
    # centred by its batch mean (the running mean's first value), cosines, uniform weights.
    with torch.no_grad():
        feats = lrn.model.features(x, LAYERS)
        s_cnn = sum(unit((f - f.mean(dim=(0, 2, 3), keepdim=True)).flatten(1).double()) @
                    unit((f - f.mean(dim=(0, 2, 3), keepdim=True)).flatten(1).double()).T for f in feats.values()) / 3
        # the pixel target: grey [0, 1] pixels centred by the mean over the N regularization images
        reg = train_images[regularization_indices(cfg.regularizer, len(train_images))].double() / 255
        g = unit(x.double().mean(dim=1).flatten(1) - reg.mean(dim=1).flatten(1).mean(dim=0))
        s_pix = g @ g.T
        s_t = torch.where(s_pix > 0.3, 1.0, torch.where(s_pix < -0.3, -1.0, 0.0)).double()
        iu = torch.triu_indices(16, 16, offset=1)
        a, b = s_cnn[iu[0], iu[1]], s_t[iu[0], iu[1]]
        want = ((d(a) - d(b)) ** 2).mean() if loss == "atanh" else ((a - b) ** 2).mean()
        logits_by_hand = lrn.model(x)
    # fp32 against fp64: d(x) magnifies rounding near +-1 (d'(x) ~ 1 / (1 - |x|)), hence 1e-3;
    # one of the 120 pairs' targets wrong would move the loss by ~1 %.
    assert sim.item() == pytest.approx(want.item(), rel=1e-3)
    assert torch.equal(lrn.target.batch_pairs(x, index, iu[0], iu[1]), b.float())
    assert task.item() == pytest.approx(torch.nn.functional.cross_entropy(logits_by_hand, y).item(), rel=1e-5)
    assert total.item() == pytest.approx(task.item() + cfg.regularizer.alpha * sim.item(), rel=1e-6)
    # the running mean took this batch's channel means, as in pairing: pairs
    assert not torch.equal(head0.running_mean("conv1"), lrn.head.running_mean("conv1"))
    assert torch.allclose(lrn.head.running_mean("conv1"), feats["conv1"].mean(dim=(0, 2, 3)), atol=1e-6)


def test_shared_target_equals_the_pairs_target_on_the_same_images(data):
    """Without augmentation, a batch of regularization images gets the values pairing: pairs gives them."""
    for target in ("pixel", "pixel_th"):
        cfg = cfg_of(pairing="shared", target=target)
        ridx = regularization_indices(cfg.regularizer, len(data.splits.train))
        shared = build_shared_target(cfg.regularizer, SharedImages(data.splits.train.images, ridx))
        pairs = build_target(cfg_of(target=target).regularizer, data.reg.images)
        rows = torch.arange(0, 200, 9)
        i, j = torch.triu_indices(len(rows), len(rows), offset=1)
        got = shared.batch_pairs(to_float(data.reg.images[rows]), ridx[rows], i, j)
        want = pairs.pairs(rows[i], rows[j])
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
        assert got.abs().max() > 0.1  # not trivially zero


def test_the_regularization_set_is_where_the_data_module_puts_it(data):
    cfg = cfg_of(target="pixel")  # pairing: pairs loads it through neuroreg.data
    for order in ("random", "file"):
        reg = copy.deepcopy(cfg.regularizer)
        reg.order = order
        got = data.splits.train.images[regularization_indices(reg, len(data.splits.train))]
        assert torch.equal(got, load_regularization_set(reg, cfg.data, data.splits.train).images)


def test_shuffle_under_shared_permutes_pairs_of_the_training_split(data):
    cfg = cfg_of(pairing="shared", target="shuffle", shuffle_of="pixel_th")
    train_images = data.splits.train.images
    ridx = regularization_indices(cfg.regularizer, len(train_images))
    target = build_shared_target(cfg.regularizer, SharedImages(train_images, ridx))
    base = ThresholdTarget(PixelIndexTarget(train_images, pixel_mean(train_images[ridx])), 0.3)
    index = torch.tensor([3, 500, 77, 1021, 12, 640])
    i, j = torch.triu_indices(6, 6, offset=1)
    got = target.batch_pairs(to_float(train_images[index]), index, i, j)
    # pair p's value is the base value of the pair perm(p), by the same Feistel permutation
    perm = target.shuffle.perm
    n = len(train_images)
    from neuroreg.pairperm import pair_from_index
    a, b = pair_from_index(perm(pair_index(index[i], index[j], n)), n)
    assert torch.equal(got, base.pairs(a, b))
    assert torch.equal(target.batch_pairs(None, index, j, i), got)  # symmetric, reads no pixels
    assert not torch.equal(got, base.pairs(index[i], index[j]))


def test_fixed_pair_loss_is_the_same_under_pairs_and_shared(data):
    """val_sim_loss compares the two pairings: the same pairs of regularization images, the same values."""
    shared_cfg, pairs_cfg = cfg_of(pairing="shared"), cfg_of()
    lrn = build_learner(shared_cfg, data, CPU)
    pairs_data = prepare_data(pairs_cfg)
    pairs_target = build_target(pairs_cfg.regularizer, pairs_data.reg.images)
    x_reg = data.reg.images
    a = fixed_pair_similarity_loss(lrn.model, lrn.head, lrn.target, x_reg, shared_cfg, reg_index=lrn.reg_index)
    b = fixed_pair_similarity_loss(lrn.model, lrn.head, pairs_target, pairs_data.reg.images, pairs_cfg)
    assert torch.equal(x_reg, pairs_data.reg.images)
    assert a == pytest.approx(b, rel=1e-5)


# --- one forward pass ------------------------------------------------------------------


def _stem_calls(cfg: RunConfig, data) -> tuple[int, list[int]]:
    lrn = build_learner(cfg, data, CPU)
    sizes: list[int] = []
    hook = lrn.model.conv1.register_forward_hook(lambda m, inp, out: sizes.append(inp[0].shape[0]))
    x_reg = data.reg.images if data.reg is not None else None
    try:
        train_epoch(lrn, cfg, 0, data.splits.train.images, data.splits.train.labels, x_reg)
    finally:
        hook.remove()
    return len(sizes), sizes


def test_shared_forwards_each_image_once(data):
    calls, sizes = _stem_calls(cfg_of(pairing="shared", n_pairs=None), data)
    assert calls == 3 and sizes == [16, 16, 16]  # one pass per step, the classification batch
    pairs_data = prepare_data(cfg_of())
    calls, sizes = _stem_calls(cfg_of(), pairs_data)  # the default pairing: a second pass of 2 x 16 pair images
    assert calls == 6 and sizes == [16, 32] * 3


# --- n_pairs drawn reproducibly --------------------------------------------------------


def test_n_pairs_are_distinct_pairs_of_the_batch_drawn_from_the_seed():
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    i, j = shared_pairs(16, 30, g(5))
    i2, j2 = shared_pairs(16, 30, g(5))
    assert torch.equal(i, i2) and torch.equal(j, j2)
    assert not torch.equal(torch.stack([i, j]), torch.stack(shared_pairs(16, 30, g(6))))
    assert len(i) == 30 and bool((i < j).all()) and bool((j < 16).all()) and bool((i >= 0).all())
    assert len(set(zip(i.tolist(), j.tolist()))) == 30  # without replacement
    a, b = shared_pairs(16, None, g(5))  # all pairs: no draw
    assert len(a) == 120 and len(set(zip(a.tolist(), b.tolist()))) == 120
    assert len(shared_pairs(16, 500, g(5))[0]) == 120  # more than the batch has: all of them


def test_n_pairs_training_repeats_under_the_seed_and_draws_differ_per_step(data):
    cfg = cfg_of(pairing="shared", n_pairs=8)

    def run(c):
        lrn = build_learner(c, data, CPU)
        stats = train_epoch(lrn, c, 0, data.splits.train.images, data.splits.train.labels, data.reg.images)
        return stats, torch.cat([p.detach().flatten() for p in lrn.model.parameters()])

    (s1, w1), (s2, w2) = run(cfg), run(cfg)
    assert s1["sim_loss"] == s2["sim_loss"] and torch.equal(w1, w2)
    assert s1["pairs_per_step"] == 8
    other = cfg_of(pairing="shared", n_pairs=8, train={"seed": 1})
    assert run(other)[0]["sim_loss"] != s1["sim_loss"]


def test_no_host_sync_in_a_shared_step(data):
    """On a GPU these would stall the queue: only the allowed read-backs happen (see test_syncdetect)."""
    for reg in ({"n_pairs": 8}, {"n_pairs": None}, {"target": "shuffle", "n_pairs": None}):
        cfg = cfg_of(pairing="shared", **reg, train={"check_finite_every": 2})
        lrn = build_learner(cfg, data, CPU)
        x, y = data.splits.train.images, data.splits.train.labels
        det = SyncDetector().mark_device(lrn.model, lrn.head, lrn.target, lrn.opt, x, y, data.reg.images)
        with det:
            train_epoch(lrn, cfg, 0, x, y, data.reg.images)
        bad = det.outside("_check_finite", "_epoch_totals")
        assert not bad, det.report(bad)


# --- fp32 similarity under bf16 autocast -----------------------------------------------------


def test_similarity_and_target_stay_fp32_under_bf16(data):
    cfg = cfg_of(pairing="shared", n_pairs=None, train={"precision": "bf16"})
    lrn = build_learner(cfg, data, CPU)
    index = torch.arange(16)
    x = to_float(data.splits.train.images[index])
    i, j = shared_pairs(16, None, torch.Generator())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = lrn.target.batch_pairs(x, index, i, j)
    outside = lrn.target.batch_pairs(x, index, i, j)
    assert inside.dtype == torch.float32 and torch.equal(inside, outside)
    _, task, sim, logits, _ = joint_loss(lrn.model, lrn.head, lrn.target, cfg, x, data.splits.train.labels[index],
                                         None, lrn.gen_pairs, Precision("bf16"), index=index)
    assert logits.dtype == torch.bfloat16  # the CNN did run in bf16 ...
    assert sim.dtype == torch.float32 and task.dtype == torch.float32  # ... the losses did not
    # and the bf16 similarity loss is close to the fp32 one on the same weights
    head = copy.deepcopy(lrn.head)
    head.mu_initialised.fill_(False)
    _, _, sim32, _, _ = joint_loss(lrn.model, head, lrn.target, cfg, x, data.splits.train.labels[index], None,
                                   lrn.gen_pairs, index=index)
    assert sim.item() == pytest.approx(sim32.item(), rel=0.1)


# --- records, layer weights, collapse, resume ----------------------------------------------


def test_records_say_the_pairing_and_pairs_per_step(tmp_path, data):
    cfg = cfg_of(pairing="shared", n_pairs=None, train={"epochs": 2, "max_steps_per_epoch": 2})
    res = train(cfg, tmp_path / "shared", data=data)
    assert [h["pairing"] for h in res.history] == ["shared", "shared"]
    assert all(h["pairs_per_step"] == 120 and h["sim_loss"] > 0 for h in res.history)
    ws = [res.history[-1][f"layer_weight_{n}"] for n in LAYERS]
    assert sum(ws) == pytest.approx(1.0) and len(set(ws)) == 3  # trained, not uniform any more
    assert set(res.evaluated_layer_weights) == set(LAYERS)
    assert "collapsed" in collapse_summary(res.evaluated_layer_weights)
    # resume repeats the uninterrupted run exactly (the pair generator is in the checkpoint)
    cfg1 = cfg_of(pairing="shared", n_pairs=5, train={"epochs": 1, "max_steps_per_epoch": 2})
    cfg2 = cfg_of(pairing="shared", n_pairs=5, train={"epochs": 2, "max_steps_per_epoch": 2})
    full = train(cfg2, tmp_path / "full", data=data)
    train(cfg1, tmp_path / "part", data=data)
    resumed = train(cfg2, tmp_path / "part", data=data, resume_from=tmp_path / "part" / "checkpoint_last.pt")
    assert resumed.history[-1]["sim_loss"] == full.history[-1]["sim_loss"]
    base = train(cfg_of(target="none", pairing="shared"), tmp_path / "base", data=data)
    assert base.history[-1]["pairing"] == "none" and base.history[-1]["pairs_per_step"] == 0


# --- refusals at validation --------------------------------------------------------------


@pytest.mark.parametrize(("reg", "train_over", "field", "words"), [
    ({"target": "neural", "neural_matrix": "m.npy"}, {}, "regularizer.pairing", ["'neural'", "pairing: pairs"]),
    ({"data": {"name": "synthetic"}}, {}, "regularizer.data", ["training set", "remove regularizer.data"]),
    ({"target": "shuffle", "shuffle_of": "features", "features_weights": "w.pt"}, {}, "regularizer.shuffle_of",
     ["pixel", "pairing: pairs"]),
    ({"n_pairs": 200}, {}, "regularizer.n_pairs", ["120 pairs", "null"]),
    ({}, {"batch_size": 1}, "train.batch_size", [">= 2"]),
])
def test_shared_refuses_what_it_cannot_compute(reg, train_over, field, words):
    with pytest.raises(ConfigError) as e:
        cfg_of(pairing="shared", **reg, train=train_over)
    assert e.value.field == field, e.value
    assert all(w in str(e.value) for w in words), str(e.value)


def test_null_n_pairs_is_for_shared_only():
    with pytest.raises(ConfigError) as e:
        cfg_of(n_pairs=None)
    assert e.value.field == "regularizer.n_pairs" and "pairing: shared" in str(e.value)


def test_a_sweep_refuses_shared_with_neural_before_ray(tmp_path):
    m = tmp_path / "m.npy"
    import numpy as np
    np.save(m, np.eye(200, dtype=np.float32))
    base = {"data": {"name": "digits", "image_size": 16}, "model": {"width": 4},
            "regularizer": {"alpha": 1.0, "n": 200, "neural_matrix": str(m), "pairing": "shared"},
            "train": {"epochs": 1}}
    raw = {"name": "m", "base": base, "space": {"regularizer.target": {"grid": ["none", "pixel_th", "neural"]}},
           "search": {"algorithm": "grid"}}
    with pytest.raises(ConfigError) as e:
        parse_spec(raw)
    assert "pairing: shared" in str(e.value) and "neural" in str(e.value)
    raw["space"] = {"regularizer.target": {"grid": ["none", "pixel_th"]}}
    parse_spec(raw)  # the same sweep without the neural arm is fine


def test_cli_refuses_with_exit_code_2(tmp_path, capsys):
    rc = main(["--set", "regularizer.target=neural", "--set", "regularizer.alpha=1", "--set",
               "regularizer.pairing=shared", "--out", str(tmp_path / "run")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "regularizer.pairing" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


# --- the default is unchanged -------------------------------------------------------------


def test_the_default_pairing_is_the_papers():
    r = RunConfig().regularizer
    assert (r.pairing, r.n_pairs, r.batch_k) == ("pairs", 16, 32)
    assert RunConfig.from_dict({"regularizer": {"target": "pixel_th", "alpha": 4.0}}).regularizer.pairing == "pairs"


def test_reports_label_the_shared_arm_all_pairs_not_nan():
    import numpy as np
    import pandas as pd

    from analysis.arms import arm_labels

    df = pd.DataFrame({"regularizer.target": ["none", "pixel_th", "pixel_th"], "regularizer.alpha": [0.0, 4.0, 4.0],
                       "regularizer.pairing": ["pairs", "pairs", "shared"],
                       "regularizer.n_pairs": [16.0, 16.0, np.nan], "train.seed": [0, 0, 0]})
    arms = arm_labels(df, list(df.columns))["arm"].tolist()
    assert arms[0] == "none"
    assert "n_pairs=16" in arms[1] and "n_pairs=all" in arms[2]
    assert not any("nan" in a for a in arms)
