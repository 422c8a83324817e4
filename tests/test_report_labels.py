"""The report's labels and tables without a browser: which fields apply to a run ('–'
elsewhere), how cells sort, Markdown emphasis, the configuration count of honest plots,
the per-trial and per-sweep tables, and the noise axes. Fast: no sweep, no Chromium."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from analysis import html_report, html_table, plots
from analysis.applicable import applies, blank_inapplicable
from analysis.importance import MIN_CONFIGS, design_label, param_importances, too_few_configurations

BASELINE = {"regularizer.target": "none", "regularizer.alpha": 0.0, "regularizer.th": 0.8,
            "regularizer.n": 500, "regularizer.pairing": "pairs", "train.seed": 0}


def _row(**kw):
    return {**BASELINE, **{f"regularizer.{k}": v for k, v in kw.items()}}


def test_baseline_uses_no_regularizer_field_but_its_target():
    assert applies("regularizer.target", BASELINE)
    for field in ("alpha", "th", "n", "layers", "n_pairs", "loss"):
        assert not applies(f"regularizer.{field}", BASELINE), field
    assert applies("train.seed", BASELINE) and applies("model.width", BASELINE)
    # No target column at all: nothing is known, every field applies.
    assert applies("regularizer.th", {"regularizer.alpha": 1.0})


def test_target_fields_follow_the_target_registry():
    from neuroreg.targets import TARGETS

    specific = {p for t in TARGETS for p in t.params}
    assert "th" in specific
    for t in TARGETS:
        if t.name in ("none", "shuffle"):
            continue
        row = _row(target=t.name, alpha=1.0, shuffle_of="pixel_th")
        for p in specific:
            assert applies(f"regularizer.{p}", row) == (p in t.params), (t.name, p)
        assert applies("regularizer.alpha", row) and applies("regularizer.n", row)
    # A shuffle reads its base's fields too.
    assert applies("regularizer.th", _row(target="shuffle", alpha=1.0, shuffle_of="pixel_th"))
    assert not applies("regularizer.th", _row(target="shuffle", alpha=1.0, shuffle_of="pixel"))
    # alpha 0 with a target: a point on the alpha axis, but the loss (and Th) is off.
    assert applies("regularizer.alpha", _row(target="pixel_th", alpha=0.0))
    assert not applies("regularizer.th", _row(target="pixel_th", alpha=0.0))


def test_pairing_centering_and_loss_fields_apply_only_to_their_mode():
    pairs = _row(target="pixel", alpha=1.0, pairing="pairs")
    batch = _row(target="pixel", alpha=1.0, pairing="batch")
    assert applies("regularizer.n_pairs", pairs) and not applies("regularizer.batch_k", pairs)
    assert applies("regularizer.batch_k", batch) and not applies("regularizer.n_pairs", batch)
    assert not applies("regularizer.ema_beta", _row(target="pixel", alpha=1.0, centering="batch"))
    assert not applies("regularizer.eps", _row(target="pixel", alpha=1.0, loss="mse"))


def test_blank_inapplicable_leaves_the_input_alone():
    df = pd.DataFrame([BASELINE, _row(target="pixel_th", alpha=2.0, th=0.3), _row(target="pixel", alpha=2.0)])
    out = blank_inapplicable(df, ["regularizer.target", "regularizer.alpha", "regularizer.th"])
    assert out["regularizer.th"].isna().tolist() == [True, False, True]
    assert out["regularizer.alpha"].isna().tolist() == [True, False, False]
    assert out["regularizer.target"].tolist() == ["none", "pixel_th", "pixel"]
    assert df["regularizer.th"].tolist() == [0.8, 0.3, 0.8]


@pytest.mark.parametrize("value, key", [
    (0.25, "0.25"), (3, "3.0"), (np.float32(0.5), "0.5"), (math.inf, "Infinity"), (-math.inf, "-Infinity"),
    (math.nan, ""), (None, ""), ("–", ""), ("", ""), ("0.9 ± 0.01", "0.9"), ("[-0.02, 0.05]", "-0.02"),
    ("[1e-3, 2]", "0.001"), ("−0.5", "-0.5"),
    ("0788ef2a", None), ("n = 2: no interval", None), ("pixel_th alpha=2", None), (True, None),
])
def test_cells_sort_by_their_number(value, key):
    assert html_table.sort_value(value) == key


def test_markdown_emphasis_becomes_html():
    text = ("*MDE (80 %)*: the smallest difference; **No exploratory difference** (0 of 3); `clean_acc`, "
            "noise_acc_mean and 2 * 3 * 4 stay; <b>x</b>")
    out = html_table.md_inline(text)
    assert "<em>MDE (80 %)</em>" in out and "<strong>No exploratory difference</strong>" in out
    assert "<code>clean_acc</code>" in out and "noise_acc_mean" in out and "2 * 3 * 4" in out
    assert "&lt;b&gt;x&lt;/b&gt;" in out and "*MDE" not in out


def test_table_html_pages_long_tables_and_marks_missing_cells():
    df = pd.DataFrame({"trial_id": [f"{i:04d}ab" for i in range(30)], "x": [math.nan] + list(range(29)),
                       "ci": ["[0.1, 0.2]"] * 29 + ["n = 2: no interval"]})
    text = html_table.table_html(df, links={"trial_id": [f"t{i}/" for i in range(30)]})
    assert f'data-page-size="{html_table.PAGE_SIZE}"' in text
    assert text.count("<tr>") == 31 and '<td data-v="">–</td>' in text and 'data-v="0.1"' in text
    assert '<a href="t3/">0003ab</a>' in text
    assert '<th scope="col" class=text>trial_<wbr>id</th>' in text
    assert "data-page-size" not in html_table.table_html(df.head(5))


def _design(n_configs: int, seeds=(0, 1)) -> pd.DataFrame:
    return pd.DataFrame([{"a": float(i), "b": "x" if i % 2 else "y", "train.seed": s, "m": i + 0.1 * s}
                         for i in range(n_configs) for s in seeds])


def test_plots_count_configurations_and_seeds_not_trials():
    assert design_label(_design(3), ["a", "b"]) == "3 configurations × 2 seeds"
    uneven = pd.concat([_design(2), _design(3, seeds=(0,)).iloc[2:]])
    assert design_label(uneven, ["a"]) == "3 configurations, 1–2 seeds each"
    reason = too_few_configurations(_design(3), ["a", "b"])
    assert reason.startswith("3 configurations × 2 seeds, fewer than 8 distinct configurations")
    assert too_few_configurations(_design(MIN_CONFIGS), ["a", "b"]) is None


def test_importance_is_refused_below_the_minimum_and_leaves_the_baseline_out():
    rng = np.random.default_rng(0)
    rows = [_row(target="pixel_th", alpha=float(a), th=float(t)) for a, t in rng.uniform(0.1, 1, (7, 2))]
    df = pd.DataFrame([BASELINE, BASELINE] + rows)
    df["score"] = rng.uniform(size=len(df))
    params = ["regularizer.alpha", "regularizer.th"]
    with pytest.raises(ValueError, match="7 configurations × 1 seed, fewer than 8"):
        param_importances(df, params, "score")
    more = pd.concat([df, pd.DataFrame([_row(target="pixel_th", alpha=0.5, th=0.5)]).assign(score=0.3)])
    imp = param_importances(more.reset_index(drop=True), params, "score")
    assert set(imp.index) == set(params) and imp.sum() == pytest.approx(1.0)


def test_parallel_coordinates_put_the_baseline_at_a_dash_not_at_its_unused_th():
    df = pd.DataFrame([BASELINE, _row(target="pixel_th", alpha=2.0, th=0.3),
                       _row(target="pixel_th", alpha=4.0, th=0.6)]).assign(clean_acc=[0.9, 0.8, 0.7])
    fig = html_report.parcoords_figure(df, ["regularizer.alpha", "regularizer.th"], "clean_acc")
    dims = {d.label: d for d in fig.data[0].dimensions}
    th = dims["th"]
    dash = th.tickvals[list(th.ticktext).index("–")]
    assert list(th.values) == [dash, 0.3, 0.6] and dash < 0.3 and th.range[0] < dash
    assert 0.8 not in list(th.values)
    assert list(dims["clean_acc"].values) == [0.9, 0.8, 0.7]
    assert "3 configurations × 1 seed" in fig.layout.title.text


def test_noise_axes_say_what_a_level_is_for_every_noise_type():
    from neuroreg.evaluate.noise import NOISE_TYPES

    assert set(plots.NOISE_AXES) == set(NOISE_TYPES)
    assert "sigma" in plots.noise_axis("gaussian")[1] and "half-width" in plots.noise_axis("uniform")[1]
    assert "fraction of pixels" in plots.noise_axis("salt_pepper")[1]
    noise = pd.DataFrame([{"arm": "a", "noise": k, "level": lv, "accuracy": 0.5, "trial_id": "t"}
                          for k in ("gaussian", "salt_pepper") for lv in (0.0, 0.1)])
    fig = html_report.noise_figure(noise, html_report._colors(["a"]))
    titles = [fig.layout[f"xaxis{i}"].title.text for i in ("", "2")]
    assert titles == [plots.noise_axis("gaussian")[1], plots.noise_axis("salt_pepper")[1]]


def test_side_by_side_keys_arms_by_arm_key_per_sweep():
    t = pd.DataFrame([
        {"sweep": s, "trial_id": f"{s}{k}{seed}", "arm": arm, "arm_key": k, "status": "TERMINATED",
         "train.seed": seed, "clean_acc": acc + 0.01 * seed}
        for s, rows in (("A", [("k1", "none", 0.9), ("k2", "pixel_th", 0.8)]), ("B", [("k1", "none", 0.7)]))
        for k, arm, acc in rows for seed in (0, 1)])
    out = html_report.side_by_side(t, ["clean_acc", "nosuchmetric"]).set_index("arm_key")
    assert list(out.columns) == ["arm", "A: seeds", "A: clean_acc", "B: seeds", "B: clean_acc"]
    assert out.loc["k1", "A: seeds"] == 2 and out.loc["k1", "B: clean_acc"].startswith("0.705 ± ")
    assert pd.isna(out.loc["k2", "B: seeds"]) and out.loc["k2", "B: clean_acc"] == "–"


def test_trial_table_links_folders_relative_to_the_page_and_never_outside_the_root(tmp_path):
    root = tmp_path / "results"
    inside = root / "sweeps" / "s" / "trial_1"
    inside.mkdir(parents=True)
    t = pd.DataFrame([{**BASELINE, "sweep": "s", "trial_id": "1", "arm": "none", "status": "TERMINATED",
                       "trial_dir": str(inside), "n_epochs": 5, "clean_acc": 0.9},
                      {**_row(target="pixel_th", alpha=2.0, th=0.3), "sweep": "s", "trial_id": "2",
                       "arm": "pixel_th", "status": "ERROR", "trial_dir": str(tmp_path / "elsewhere" / "trial_2"),
                       "n_epochs": 1, "clean_acc": math.nan}])
    table, hrefs = html_report.trial_table(t, ["regularizer.alpha", "regularizer.th"], ["clean_acc"], root,
                                           root / "reports" / "s")
    assert table["trial_id"].tolist() == ["1", "2"] and table["epochs"].tolist() == [5, 1]
    assert hrefs == ["../../sweeps/s/trial_1/", None]
    assert table["folder"].tolist() == ["trial_1", "trial_2"]
    assert pd.isna(table.loc[0, "regularizer.th"]) and table.loc[1, "regularizer.th"] == 0.3
    html = html_table.table_html(table, links={"folder": hrefs})
    assert str(tmp_path) not in html and re.search(r'href="\.\./\.\./sweeps/s/trial_1/"', html)


def test_html_contour_and_slice_are_optunas_own_plotly_figures_titled_by_configurations():
    d = _design(9, seeds=(0,)).rename(columns={"a": "regularizer.alpha", "b": "regularizer.target"})
    d["regularizer.th"] = np.linspace(0.1, 0.9, len(d))
    d["regularizer.target"] = "pixel_th"
    d["regularizer.alpha"] = d["regularizer.alpha"] + 1.0
    params = ["regularizer.alpha", "regularizer.th"]
    contour = html_report.optuna_figure("contour", d, params, "m", "max", None)
    assert any(t.type == "contour" for t in contour.data)
    assert contour.layout.title.text == "m: Optuna contour plot, 9 configurations × 1 seed"
    assert contour.layout.xaxis.title.text == "alpha" and contour.layout.yaxis.title.text == "th"
    slice_ = html_report.optuna_figure("slice", d.head(3), params, "m", "max", None)
    assert all(t.type == "scatter" for t in slice_.data) and "3 configurations × 1 seed" in slice_.layout.title.text
