"""Calibration and fidelity, and what per-image test predictions show.

From every record: expected calibration error (test_ece, 15 equal-width bins as kd_core.metrics
computes it) and top-1 agreement with the teacher (test_agreement) against tau, per student and
noise rate, as a figure and a table with the accuracy tables' intervals (agreement is a share of
the test images, so its interval adds the test set's binomial term as accuracy's does; ECE's is
the t interval over seeds).

From each trial's predictions.npz (kd_core.analysis.predictions; trials trained before it was
stored have none, and the report says so): reliability diagrams of the paper's arms, accuracy
and teacher agreement per class, and paired exact McNemar tests of each student setting
against its architecture trained alone on the same test images (one seed's pair of models per
test, Holm over the table).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from statsmodels.stats.contingency_tables import mcnemar

from ..domain.plan import setting_order
from .figures import ALONE, BANDS, Figures, legend
from .load import full_chains
from .stats import MIN_SEEDS, accuracy_interval, cell, holm, p_text
from .tables import Section, interval_numbers

ECE_BINS = 15  # kd_core.metrics.expected_calibration_error's
RELIABILITY_BINS = 10
MEANING = {"label": "accuracy: the share of the class's test images whose top-1 class is right",
           "teacher_pred": "agreement: the share of the class's test images on which the "
                           "student's top-1 class is its teacher's"}
METRICS = (("test_ece", "ECE %", False), ("test_agreement", "agreement with teacher %", True))


def _tau_label(t: float) -> str:
    return "inf" if math.isinf(t) else f"{t:g}"


def calibration_figure(figs: Figures) -> None:
    """Per student (rows) and noise rate x metric (columns): ECE and teacher agreement over
    tau, a line per alpha (the largest BANDS with bands), MSE and the architecture alone as
    reference lines."""
    df = figs.df
    students = df[(df.generation > 0) & df.test_ece.notna()]
    kl = students[students.loss == "kl"]
    if kl.empty:
        return
    taus = sorted(kl.tau.unique())
    pos = {t: i for i, t in enumerate(taus)}
    names = sorted(set(students.student))
    panels = [(noise, m) for noise in figs.noises for m in METRICS]
    fig, axes = figs.grid(len(names), len(panels))
    for row, student in zip(axes, names, strict=True):
        for ax, (noise, (column, label, binomial)) in zip(row, panels, strict=True):
            part = students[(students.student == student) & (students.noise == noise)]
            k = part[part.loss == "kl"]
            k = k.assign(x=k.tau.map(pos), y=k[column] * 100)
            if k.empty or k.y.isna().all():
                ax.set_visible(False)
                continue
            alphas = sorted(k.alpha.unique(), reverse=True)
            for alpha in alphas:
                line = k[k.alpha == alpha]
                means = line.groupby("x").y.mean()
                ax.plot(means.index, means.values, color="0.4", lw=1.2,
                        ls="-" if alpha == alphas[0] else "--")
                ax.scatter(means.index, means.values, zorder=5,
                           c=[figs.colours[s] for s in line.groupby("x").setting.first()])
                if alpha in alphas[:BANDS] and figs.band:
                    spans = line.groupby("x").y.apply(
                        lambda v, b=binomial: interval(v, figs.step if b else None))
                    ax.fill_between(spans.index, [lo for lo, _ in spans],
                                    [hi for _, hi in spans], color="0.4", alpha=0.2, lw=0)
            mse = part[part.loss == "mse"][column].mean() * 100
            if not math.isnan(mse):
                ax.axhline(mse, ls="--", color=figs.colours.get("mse", "r"), lw=1.2)
            alone = df[(df.generation == 0) & (df.model == part.model.iloc[0])
                       & (df.noise == noise)][column].mean() * 100
            if not math.isnan(alone):
                ax.axhline(alone, ls=":", color="k", lw=1.2)
            ax.set_xticks(range(len(taus)), [_tau_label(t) for t in taus])
            ax.set(xlabel="tau (kl)", ylabel=label, title=f"{student}\nnoise {noise}, {label}")
    marks = {s: {"lw": 0, "marker": "o"} for s in students.setting if s.startswith("kl")}
    marks |= {s: {"ls": "--", "marker": None} for s in students.setting if s == "mse"}
    legend(fig, axes, figs.colours, set(students.setting) | {ALONE},
           marks | {ALONE: {"ls": ":", "marker": None}})
    figs.save(fig, "calibration_and_agreement.png",
              f"Calibration and fidelity over tau: expected calibration error ({ECE_BINS} "
              "equal-width confidence bins, test set) and top-1 agreement with the teacher on "
              "the test set, per student (rows) and noise rate; KL students a grey line per "
              "alpha (the largest solid; dots in each setting's colour), MSE red dashed, the "
              "architecture alone black dotted (its ECE; it has no teacher to agree with). "
              f"Lines: means over seeds (at least {figs.n} per point); bands: 95% intervals "
              "as the tables' (agreement: t over seeds plus the test set's binomial variance; "
              f"ECE: t over seeds), none below {MIN_SEEDS} seeds, for the {BANDS} largest "
              "alphas only.")


def interval(values, step: float | None) -> tuple[float, float]:
    """A band's (low, high) in points of a share (x 100), clipped to [0, 100]."""
    mean, half, n = accuracy_interval(np.asarray(values) / 100, step)
    if math.isnan(half):
        return mean, mean
    return max(mean - half, 0.0), min(mean + half, 100.0)


def calibration_table(df: pd.DataFrame, step: float | None, decimals: int) -> list[Section]:
    """Per student and noise rate (rows) and setting: ECE and teacher agreement, mean ± 95%
    interval (n)."""
    students = df[(df.generation > 0) & df.test_ece.notna()]
    if students.empty:
        return []
    frame = students.assign(where=students.student + ", noise " + students.noise_rate.map(
        lambda r: f"{r:g}"))
    rows, numbers = [], []
    for (where, setting), part in frame.groupby(["where", "setting"]):
        rows.append({"student, noise": where, "setting": setting,
                     "ECE %": cell(part.test_ece, decimals),
                     "agreement %": cell(part.test_agreement, decimals, test_step=step)})
    table = pd.DataFrame(rows)
    table = table.assign(order=table.setting.map(setting_order)).sort_values(
        ["student, noise", "order"], kind="stable").drop(columns="order")
    table.index = pd.Index(table.pop("student, noise") + " | " + table.setting,
                           name="student, noise | setting")
    table = table.drop(columns="setting")
    frame = frame.assign(label=frame["where"] + " | " + frame.setting,
                         ece="ECE %", agree="agreement %")
    numbers = pd.concat([interval_numbers(frame, "label", "ece", "test_ece", None),
                         interval_numbers(frame, "label", "agree", "test_agreement", step)])
    return [Section("calibration and fidelity: expected calibration error and top-1 agreement "
                    "with the teacher on the test set, mean ± 95% interval (n seeds; "
                    "agreement: plus the test set's binomial variance)", table,
                    [f"ECE over {ECE_BINS} equal-width confidence bins of the top-1 "
                     "probability (kd_core.metrics); agreement: the share of test images on "
                     "which the student's top-1 class is the teacher's"], numbers=numbers)]


# ---- per-image predictions -----------------------------------------------------------
def prediction_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The runs whose predictions the report reads: the first direct pair's generation-1
    students (every setting, seed and noise rate), their teachers and the student's
    architecture trained alone."""
    direct = [c for c in full_chains(df) if c.count(">") == 1]
    if not direct:
        return df.iloc[:0]
    teacher, student = direct[0].split(">")
    students = df[(df.generation == 1) & (df.chain == direct[0])]
    alone = df[(df.generation == 0) & df.model.isin([teacher, student])]
    return pd.concat([students, alone])


def arms(runs: pd.DataFrame, chain: str) -> pd.DataFrame:
    """``runs`` with an `arm` column: "teacher (X)", "alone (ce)" for the student's
    architecture trained alone, else the setting."""
    teacher, student = chain.split(">")
    arm = np.where(runs.generation > 0, runs.setting,
                   np.where(runs.model == teacher, f"teacher ({teacher})", ALONE))
    out = runs.assign(arm=arm)
    return out[(out.generation > 0) | out.model.isin([teacher, student])]


def with_predictions(df: pd.DataFrame, preds: dict[str, dict]) -> tuple[pd.DataFrame, str]:
    """The prediction runs that have predictions (with arms), and the first direct pair."""
    runs = prediction_runs(df)
    if runs.empty:
        return runs, ""
    chain = next(c for c in full_chains(df) if c.count(">") == 1)
    runs = arms(runs, chain)
    return runs[runs.key.isin(preds.keys())], chain


def reliability_figure(figs: Figures, preds: dict[str, dict]) -> None:
    """Per noise rate: accuracy against confidence in RELIABILITY_BINS equal-width bins for
    the teacher, the architecture alone and each setting of the first direct pair, every seed's
    test images pooled."""
    runs, chain = with_predictions(figs.df, preds)
    if runs.empty:
        return
    wanted = paper_arms(runs)
    runs = runs[runs.arm.isin(wanted)]
    colours = {**figs.colours, **{a: (0.55, 0.55, 0.55) for a in wanted if a.startswith("t")}}
    fig, axes = figs.grid(1, len(figs.noises))
    edges = np.linspace(0, 1, RELIABILITY_BINS + 1)
    for ax, noise in zip(axes[0], figs.noises, strict=True):
        here = runs[runs.noise == noise]
        if here.empty:
            ax.set_visible(False)
            continue
        ax.plot([0, 1], [0, 1], color="0.75", lw=0.8)
        for arm in wanted:
            keys = here[here.arm == arm].key
            if keys.empty:
                continue
            conf = np.concatenate([preds[k]["confidence"].astype(float) for k in keys])
            right = np.concatenate([preds[k]["pred"] == preds[k]["label"] for k in keys])
            which = np.clip(np.digitize(conf, edges) - 1, 0, RELIABILITY_BINS - 1)
            x, y = [], []
            for b in range(RELIABILITY_BINS):
                mask = which == b
                if mask.sum() >= 5:  # fewer images: no point a reader could trust
                    x.append(conf[mask].mean())
                    y.append(right[mask].mean())
            ax.plot(x, y, marker="o", ms=3, lw=1.1, color=colours.get(arm, "0.3"),
                    ls=":" if arm == ALONE else "-", label=arm)
        ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal", xlabel="confidence (top-1 probability)",
               ylabel="accuracy", title=f"{chain}, noise {noise}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7, frameon=False)
    figs.save(fig, "reliability.png",
              f"Reliability diagrams of the paper's arms for {chain} (generation 1) per noise "
              f"rate: accuracy against mean confidence in {RELIABILITY_BINS} equal-width "
              "confidence bins (bins with fewer than 5 images left out), each arm's test images "
              "pooled over its seeds; the grey diagonal is perfect calibration (below it: "
              "over-confident). From the trials' stored per-image predictions.")


def paper_arms(runs: pd.DataFrame) -> list[str]:
    """The teacher, the architecture alone, KL at the smallest and largest tau (alpha 1), the
    field's standard KD (alpha < 1 at tau 4 where run) and MSE, as present."""
    present = set(runs.arm)
    out = sorted(a for a in present if a.startswith("teacher"))
    out += [ALONE] if ALONE in present else []
    kl = sorted((s for s in present if s.startswith("kl") and " a=" not in s), key=setting_order)
    out += kl[:1] + kl[-1:] if len(kl) > 1 else kl
    out += sorted(s for s in present if s.startswith("kl tau=4 a="))[:1]
    out += [s for s in ("mse",) if s in present]
    return list(dict.fromkeys(out))


def per_class(df: pd.DataFrame, preds: dict[str, dict], decimals: int,
              names) -> list[Section]:
    """Per noise rate: accuracy per class of each paper arm (mean ± 95% interval over seeds,
    t), and each student arm's top-1 agreement with its teacher per class."""
    runs, chain = with_predictions(df, preds)
    if runs.empty:
        return []
    wanted = paper_arms(runs)
    out = []
    for noise, here in runs[runs.arm.isin(wanted)].groupby("noise_rate"):
        for what, field in (("accuracy", "label"), ("agreement with the teacher", "teacher_pred")):
            long = []
            for r in here.itertuples():
                p = preds[r.key]
                if field not in p:
                    continue
                hit = p["pred"] == p[field]
                for c in np.unique(p["label"]):
                    mask = p["label"] == c
                    long.append({"class": names(c), "arm": r.arm, "seed": r.seed,
                                 "value": float(hit[mask].mean())})
            if not long:
                continue
            long = pd.DataFrame(long)
            table = long.pivot_table(index="class", columns="arm", values="value",
                                     aggfunc=lambda v: cell(v, decimals), sort=False)
            table = table[[a for a in wanted if a in table.columns]]
            images = int(np.bincount(preds[here.key.iloc[0]]["label"]).min())
            out.append(Section(
                f"{what} % per test class, {chain} (noise={noise:g}): mean ± 95% interval over "
                f"seeds (t; n seeds; at least {images} test images per class), the paper's arms",
                table, ["from each trial's stored per-image test predictions; "
                        + MEANING[field]],
                numbers=interval_numbers(long, "class", "arm", "value", None)))
    return out


def paired_tests(df: pd.DataFrame, preds: dict[str, dict], decimals: int) -> list[Section]:
    """Each student setting of the first direct pair against its architecture trained alone,
    per noise rate and seed, on the same test images: exact McNemar (the discordant images
    only), Holm over the table's tests."""
    runs, chain = with_predictions(df, preds)
    if runs.empty:
        return []
    alone = runs[runs.arm == ALONE].set_index(["noise_rate", "seed"]).key
    tests = []
    for r in runs[runs.generation > 0].itertuples():
        other = alone.get((r.noise_rate, r.seed))
        if other is None:
            continue
        a, b = preds[r.key], preds[other]
        if len(a["label"]) != len(b["label"]) or not (a["label"] == b["label"]).all():
            continue  # not the same images in the same order: no paired test
        ra, rb = a["pred"] == a["label"], b["pred"] == b["label"]
        only_a, only_b = int((ra & ~rb).sum()), int((~ra & rb).sum())
        p = mcnemar([[int((ra & rb).sum()), only_a], [only_b, int((~ra & ~rb).sum())]],
                    exact=True).pvalue
        tests.append({"noise": r.noise_rate, "setting": r.setting, "seed": r.seed,
                      "diff": (ra.mean() - rb.mean()) * 100, "only_a": only_a,
                      "only_b": only_b, "p": float(p), "n": len(ra)})
    if not tests:
        return []
    tests = pd.DataFrame(tests)
    tests["p_holm"] = holm(list(tests.p))
    tests = tests.assign(order=tests.setting.map(setting_order)).sort_values(
        ["noise", "order", "seed"], kind="stable")
    label = (tests.noise.map(lambda r: f"noise {r:g}") + " | " + tests.setting + " | seed "
             + tests.seed.astype(str))
    table = pd.DataFrame({
        "difference, points": tests["diff"].map(lambda d: f"{d:+.{decimals}f}").to_numpy(),
        "only the student right": tests.only_a.to_numpy(),
        "only alone right": tests.only_b.to_numpy(),
        "McNemar": [f"p={p_text(p)}, p_Holm={p_text(q)}"
                    for p, q in zip(tests.p, tests.p_holm, strict=True)],
    }, index=pd.Index(label.to_numpy(), name="noise | setting | seed"))
    numbers = {}
    for key, t in zip(table.index, tests.itertuples(), strict=True):
        numbers[(key, "difference, points")] = {"estimate": t.diff, "n": t.n}
        numbers[(key, "McNemar")] = {"p": t.p_holm, "n": t.n}
    numbers = pd.DataFrame.from_dict(numbers, orient="index")
    return [Section(
        f"McNemar per seed, {chain}: each setting against {chain.split('>')[1]} trained alone "
        "on the same test images (generation 1, exact test)", table,
        ["the test's unit is the test image: it asks whether these two models (one seed each) "
         "differ on this test set, the paired test the seed tables cannot run; it says nothing "
         "of another seed's models (the claims and the accuracy tables' comparisons are over "
         f"seeds); p_Holm over this table's {len(tests)} tests; the CSV's p is p_Holm"],
        numbers=numbers)]
