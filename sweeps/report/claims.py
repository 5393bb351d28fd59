"""The paper's claims (C1-C6: docs/claims.md states them, with the paper's numbers and sources)
as sections. Primary: each claim's effects pooled over every row it speaks of (pooled.py: seeds
nested in rows, a stratified sign-flip test, its power) and the claim's one verdict from them
(evidence.decide). Secondary: a table whose rows are the groups the claim speaks of (a student,
i.e. architecture and lineage, at one noise rate and alpha), each with its own tests,
Holm-adjusted over the claim's family, and the verdict its data supports.

The arms compared are fixed in advance by the paper (every KL tau, the grid's largest tau, MSE,
the tau nearest 0.5), never picked on the test set; trends are Spearman's rho within a seed
(runs of one seed share its teacher), never over runs pooled across seeds. The pooled effects
use the runs at alpha = 1, as the paper states its claims.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import paper
from .evidence import (
    Part,
    Test,
    by_seed,
    fmt,
    groups,
    kl_setting,
    kl_taus,
    label,
    mse_setting,
    paired_test,
    primary,
    row_cells,
    row_labels,
    section,
    seeds_of,
    tau_rank,
    units,
    wide,
)
from .load import distance_column
from .pooled import RHO, pool, within_seed_rho
from .stats import (
    ALPHA,
    SIMILAR_MARGIN,
    cell,
    combine,
    correlation,
    resolution,
)
from .tables import Section

PAPER_LOSSES = ("kl", "mse")


def claims(df: pd.DataFrame, margin: float = SIMILAR_MARGIN) -> list[Section]:
    """C1-C6 from the done trials; ``margin``: C2's non-inferiority margin, accuracy points.
    The paper's arms only (kl and mse students): a plugin's loss is in the tables and figures,
    never in a claim's evidence (C3's correlation, C4's columns, C6's pairs)."""
    students = df[(df.generation > 0) & df.loss.isin(PAPER_LOSSES)]
    if students.empty:
        return []
    return [c1(students), c2(students, margin), c3(students), c4(students), c5(students, df),
            c6(students)]


# ---- the pooled effects a claim's verdict comes from ----------------------------------------
def differences(students: pd.DataFrame, a, b, column: str, scale: float = 1) -> pd.DataFrame:
    """Per row (at alpha = 1) and seed, setting ``a`` minus setting ``b`` (names, or functions
    of the row's runs giving one)."""
    out = {}
    for row, part in groups(primary(students)):
        sa, sb = (s(part) if callable(s) else s for s in (a, b))
        if sa is None or sb is None:
            continue
        d = (by_seed(part, sa, column, scale) - by_seed(part, sb, column, scale)).dropna()
        out[label(row)] = d
    return units(out)


def trend(students: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per row (at alpha = 1) and seed, Spearman's rho of tau against ``column`` over that
    seed's KL runs."""
    kl = primary(students)
    kl = kl[kl.loss == "kl"]
    frame = pd.DataFrame({"row": row_labels(kl), "seed": kl.seed, "x": tau_rank(kl.tau),
                          "y": kl[column]})
    return within_seed_rho(frame, "x", "y")


def every_tau(students: pd.DataFrame, name: str, a, column: str, expected: int,
              scale: float = 1, margin: float | None = None) -> list:
    """``a`` against each KL tau of the grid, each pooled (a claim of "every tau"; with
    ``margin``, each a non-inferiority effect)."""
    suffix = "" if margin is None else " (similar)"
    return [pool(differences(students, a, kl_setting(t), column, scale),
                 f"{name} - {kl_setting(t)}{suffix}", expected, margin=margin)
            for t in kl_taus(primary(students))]


# ---- the claims ------------------------------------------------------------------------------
def c1(students: pd.DataFrame) -> Section:
    """C1: logit distance falls as tau grows; MSE gives the smallest."""
    col, what = distance_column(students)
    rows, tests = [], []
    for row, part in groups(students):
        taus = kl_taus(part)
        kl = part[part.loss == "kl"]
        rows.append({**row_cells(row), **wide(part, col, 2, 1)})
        if len(taus) > 1:
            c = correlation(tau_rank(kl.tau), kl[col], seeds_of(kl))
            tests.append(Test(row, "Spearman(tau, distance)", c.spearman, c.p, -1, seeds_of(kl),
                              f"rho={fmt(c.spearman, 2, '+')} over {c.n}"))
        if (part.loss == "mse").any():
            mse = by_seed(part, mse_setting(float(row[2])), col)
            tests += [paired_test(row, f"mse - {kl_setting(t)}", mse,
                                  by_seed(part, kl_setting(t, float(row[2])), col), -1, 2)
                      for t in taus]
    parts = [Part("trend", [pool(trend(students, col), "rho(tau, distance) within seed", -1,
                                      limits=RHO)]),
             Part("mse smallest", every_tau(students, "mse", "mse", col, -1))]
    return section(f"C1 logit distance ({what}) falls as tau grows; MSE gives the smallest",
                   rows, tests, ["cells: the distance, mean ± 95% t-interval over seeds"], None,
                   parts)


def c2(students: pd.DataFrame, margin: float) -> Section:
    """C2: accuracy rises with tau (clean labels); MSE outperforms the best KL (the abstract's
    superiority: MSE above every KL tau, so above the best without picking it on the test
    set). Beside it, secondary: MSE no worse than any KL tau by more than ``margin``."""
    step, decimals = resolution(students)
    clean = students[students.noise_rate == 0]
    rows, tests = [], []
    for row, part in groups(clean):
        taus, kl = kl_taus(part), part[part.loss == "kl"]
        rows.append({**row_cells(row), **wide(part, "test_acc", decimals, 100, step)})
        if len(taus) > 1:
            c = correlation(tau_rank(kl.tau), kl.test_acc, seeds_of(kl))
            tests.append(Test(row, "Spearman(tau, accuracy)", c.spearman, c.p, +1, seeds_of(kl),
                              f"rho={fmt(c.spearman, 2, '+')} over {c.n}"))
        if (part.loss == "mse").any():
            mse = by_seed(part, mse_setting(float(row[2])), "test_acc", 100)
            tests += [paired_test(row, f"mse - {kl_setting(t)}", mse,
                                  by_seed(part, kl_setting(t, float(row[2])), "test_acc", 100),
                                  +1, decimals) for t in taus]
    parts = [Part("trend", [pool(trend(clean, "test_acc"), "rho(tau, accuracy) within seed", +1,
                                 paper.effect("accuracy trend"), limits=RHO)]),
             Part("mse above every kl tau", every_tau(clean, "mse", "mse", "test_acc", +1, 100)),
             Part("mse similar", every_tau(clean, "mse", "mse", "test_acc", +1, 100, margin),
                  margin, secondary=True)]
    return section(
        "C2 accuracy rises with tau; MSE outperforms the best KL (noise 0)",
        rows, tests,
        ["the paper's abstract: \"The MSE loss outperforms the KL divergence loss\"; MSE above "
         "the best KL is MSE above every KL tau of the grid (an intersection: no tau is picked "
         "on the test set)",
         "cells: test accuracy %, mean ± 95% interval (seeds and the test set's binomial "
         "variance)",
         f"secondary, '(similar)': the 95% interval of MSE - KL above -{margin:g} point "
         f"(non-inferiority at one-sided {ALPHA / 2:g}, the spec's report.similar_margin); "
         "inferior where the one-sided test of 'worse by more than the margin' is significant "
         "after Holm over the taus; not part of the verdict"],
        None, parts, decimals)


def c3(students: pd.DataFrame) -> Section:
    """C3: across runs of one teacher-student pair, smaller distance goes with higher accuracy."""
    col, what = distance_column(students)
    rows, tests = [], []
    for row, part in groups(students):
        c = correlation(part[col], part.test_acc, part.seed.nunique())
        rows.append({**row_cells(row), "Pearson r": fmt(c.pearson, 2, "+"),
                     "Spearman rho": fmt(c.spearman, 2, "+"), "runs": c.n,
                     "seeds": part.seed.nunique()})
        tests.append(Test(row, "Spearman", c.spearman, c.p, -1, int(part.seed.nunique()),
                          f"rho={fmt(c.spearman, 2, '+')}"))
    mine = primary(students)
    frame = pd.DataFrame({"row": row_labels(mine), "seed": mine.seed, "x": mine[col],
                          "y": mine.test_acc})
    parts = [Part("within pair", [pool(within_seed_rho(frame, "x", "y"),
                                       "rho(distance, accuracy) within seed", -1,
                                       limits=RHO)])]
    return section(f"C3 smaller logit distance ({what}) goes with higher accuracy, within each "
                   "teacher-student pair", rows, tests,
                   ["row table: over every student run of the pair (all settings); runs of one "
                    "seed share a teacher, so its p-value is optimistic (the pooled effect is "
                    "within seed)"], None, parts)


def c4(students: pd.DataFrame) -> Section:
    """C4: MSE keeps the teacher's feature shape (CKA above KL's at every tau), shrunk (feature
    norm below the teacher's)."""
    have = students.dropna(subset=["train_feature_cka"])
    have = have.assign(log_norm_ratio=np.log(have.train_feature_norm
                                             / have.teacher_feature_norm))
    rows, tests = [], []
    for row, part in groups(have):
        rows.append({**row_cells(row),
                     **{f"CKA {s}": v for s, v in wide(part, "train_feature_cka", 2, 1).items()},
                     "mse ||r_s||/||r_t||": cell(np.exp(part[part.loss == "mse"].log_norm_ratio),
                                                 2, 1)})
        a, taus = float(row[2]), kl_taus(part)
        if taus and (part.loss == "mse").any():
            mse = by_seed(part, mse_setting(a), "train_feature_cka")
            tests += [paired_test(row, f"CKA mse - {kl_setting(t)}", mse,
                                  by_seed(part, kl_setting(t, a), "train_feature_cka"), +1, 3)
                      for t in taus]
            ratio = by_seed(part, mse_setting(a), "log_norm_ratio")
            tests.append(paired_test(row, "log norm ratio mse", ratio, ratio * 0, -1, 2))
    parts = [Part("shape kept", every_tau(have, "CKA mse", "mse", "train_feature_cka", +1)),
             Part("shrunk", [pool(_own(have, "log_norm_ratio"), "log ||r_s||/||r_t|| (mse)",
                                  -1)])]
    notes = ["CKA: linear CKA of the student's and the teacher's penultimate features on the "
             "training set (1 = the same shape up to rotation and scale); the projections "
             "figure shows the same runs; compared with every KL tau of the grid"]
    if have.empty:
        notes.append("no CKA in these results (trained before it was measured): not testable")
    return section("C4 MSE keeps the teacher's penultimate shape (CKA above KL's at every tau), "
                   "shrunk (norm ratio below 1)", rows, tests, notes, None, parts, 3)


def _own(students: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per row (at alpha = 1) and seed, MSE's own ``column``."""
    return units({label(row): by_seed(part, mse_setting(), column)
                  for row, part in groups(primary(students))})


def small_tau(taus) -> float | None:
    """C5's small tau: the grid's nearest to 0.5 among tau <= 1 (the paper's best)."""
    return min((t for t in taus if t <= 1), key=lambda t: abs(math.log(t / 0.5)), default=None)


def alone_by_seed(df: pd.DataFrame | None, model: str, noise: float) -> pd.Series:
    """Per seed, test accuracy (points) of ``model`` trained alone on the same (noisy) labels:
    the baseline a student's "mitigates the noise" is measured against."""
    if df is None:
        return pd.Series(dtype=float)
    alone = df[(df.generation == 0) & (df.chain == model) & (df.noise_rate == noise)]
    return alone.groupby("seed").test_acc.mean() * 100


def c5(students: pd.DataFrame, df: pd.DataFrame | None = None) -> Section:
    """C5: with noisy labels (teacher trained on them) KD mitigates the noise: the student at a
    small tau (<= 1, the grid's nearest to 0.5) beats the same architecture trained alone on the
    same labels, and beats the largest tau and MSE (which transfer more of the noise). ``df``:
    every trial (the architectures trained alone are generation 0)."""
    step, decimals = resolution(students)
    noisy = students[students.noise_rate > 0]
    rows, tests, notes, mitigates = [], [], [], {}
    for row, part in groups(noisy):
        taus, a = kl_taus(part), float(row[2])
        small = small_tau(taus)
        model, noise = part.model.iloc[0], float(row[1])
        alone = alone_by_seed(df, model, noise)
        # a generation-1 student's teacher is the noise-trained generation 0, one per seed; a
        # later generation's teachers differ by setting (the accuracy tables show them)
        teacher = (cell(part.drop_duplicates("teacher_key").teacher_acc, decimals, test_step=step)
                   if (part.generation == 1).all() else "per setting")
        rows.append({**row_cells(row),
                     **wide(part, "test_acc", decimals, 100, step),
                     f"{model} alone": cell(alone / 100, decimals, 100, step)
                     if len(alone) else "-", "teacher": teacher,
                     **{f"agreement {s}": v for s, v in
                        wide(part, "test_agreement", decimals, 100).items()},
                     "still rising": f"{int(part.rising.sum())} of {len(part)}",
                     "did not learn": f"{int(part.stuck.sum())} of {len(part)}"})
        if small is None:
            continue
        acc = by_seed(part, kl_setting(small, a), "test_acc", 100)
        if len(alone):
            tests.append(paired_test(row, f"{kl_setting(small)} - alone", acc, alone, +1,
                                     decimals))
            if a == 1:
                mitigates[label(row)] = (acc - alone).dropna()
        if len(taus) > 1 and taus[-1] > 1:
            tests.append(paired_test(row, f"{kl_setting(small)} - {kl_setting(taus[-1])}", acc,
                                     by_seed(part, kl_setting(taus[-1], a), "test_acc", 100),
                                     +1, decimals))
        if (part.loss == "mse").any():
            tests.append(paired_test(row, f"{kl_setting(small)} - mse", acc,
                                     by_seed(part, mse_setting(a), "test_acc", 100), +1,
                                     decimals))
    taus = kl_taus(primary(noisy))
    small, parts = small_tau(taus), []
    if small is not None and mitigates:
        parts.append(Part("mitigates", [pool(units(mitigates),
                                             f"{kl_setting(small)} - alone (same labels)", +1)]))
    if small is not None and taus and taus[-1] > 1:
        parts.append(Part("beats large tau", [pool(differences(
            noisy, kl_setting(small), kl_setting(taus[-1]), "test_acc", 100),
            f"{kl_setting(small)} - {kl_setting(taus[-1])}", +1)]))
    if small is not None:
        parts.append(Part("beats mse", [pool(differences(
            noisy, kl_setting(small), "mse", "test_acc", 100), f"{kl_setting(small)} - mse",
            +1)]))
    if not noisy.empty and not any(t <= 1 for t in kl_taus(noisy)):
        notes.append("not testable: the grid has no kl tau <= 1 at noise > 0")
    if not noisy.empty and not mitigates:
        notes.append("'mitigates' not testable: no architecture trained alone on the same noisy "
                     "labels (grid.baselines)")
    return section(
        "C5 with noisy labels KD mitigates the noise (the student at a small tau beats its "
        "architecture trained alone), most at a small tau (<= 1): above a large tau and MSE",
        rows, tests,
        notes + ["the paper's abstract: \"KD, particularly when using the KL divergence loss "
                 "with small tau, mitigates the label noise\"",
                 "cells: test accuracy % (the architecture alone on the same noisy labels and "
                 "the teacher too; 95% intervals include the test set's binomial variance) and "
                 "top-1 agreement with the teacher on the test set, mean ± 95% t-interval over "
                 "seeds; 'still rising' (see convergence) warns that a gap may be "
                 "under-training"], None, parts, decimals)


class _Rules(dict):
    """Every row gets the same verdict rule."""

    def __init__(self, rule):
        super().__init__()
        self.rule = rule

    def get(self, key, default=None):
        return self.rule


def c6(students: pd.DataFrame) -> Section:
    """C6: teacher -> intermediate -> student improves on teacher -> student directly (paper:
    74.52 vs 74.24). The student of the intermediate trained alone (74.84) is a comparison the
    paper reports, not part of the claim: shown beside, secondary."""
    step, decimals = resolution(students)
    rows, tests = [], []
    pooled: dict[str, dict] = {"direct": {}, "intermediate alone": {}}
    for chain in sorted(set(students[students.generation == 2].chain)):
        t, m, s = chain.split(">")
        arms = {"sequential": (2, chain), "direct": (1, f"{t}>{s}"),
                "intermediate alone": (1, f"{m}>{s}")}
        for (setting, noise, alpha), part in students.groupby(
                ["setting", "noise_rate", "alpha"], dropna=False):
            acc = {a: by_seed(part[(part.generation == g) & (part.chain == c)], setting,
                              "test_acc", 100) for a, (g, c) in arms.items()}
            if acc["sequential"].empty:
                continue
            row = (chain, setting, f"{noise:g}")
            diffs = {}
            for other, expected in (("direct", +1), ("intermediate alone", -1)):
                if acc[other].empty:
                    continue
                tests.append(paired_test(row, f"sequential - {other}", acc["sequential"],
                                         acc[other], expected, decimals))
                d = (acc["sequential"] - acc[other]).dropna()
                diffs[f"sequential - {other}"] = cell(d, decimals, 1)
                if alpha == 1 or (isinstance(alpha, float) and math.isnan(alpha)):
                    pooled[other][f"{chain} {setting} noise={noise:g}"] = d
            rows.append({"sequential chain": chain, "setting": setting, "noise": row[2],
                         **{a: cell(v / 100, decimals, 100, step)
                            for a, v in acc.items() if not v.empty},
                         **diffs, "_row": row, "_label": f"{chain} {setting} noise={noise:g}"})
    parts = [Part(other, [pool(units(found), f"sequential - {other}", expected,
                               paper.effect(f"sequential - {other}"))],
                  secondary=other != "direct")
             for (other, found), expected in zip(pooled.items(), (+1, -1), strict=True)
             if found]
    return section(
        "C6 sequential distillation improves on distilling from the teacher directly",
        rows, tests,
        ["the paper's abstract: \"sequential distillation can improve performance\" (74.52 "
         "sequential vs 74.24 direct); the student of the intermediate trained alone (74.84) is "
         "a comparison the paper reports, shown beside, not part of the claim",
         "cells: test accuracy % of the final student per arm (95% intervals include the test "
         "set's binomial variance, as in the accuracy tables), and the per-seed differences "
         "over seeds only (the arms are scored on the same images; below 3 seeds each seed's "
         "difference), matched on setting, noise and seed; pooled over every setting and noise "
         "rate at alpha = 1"], _Rules(_direct_only), parts, decimals)


def _direct_only(tests: list[Test]) -> str:
    """C6's row verdict: its sequential - direct test alone."""
    return combine([t.verdict() for t in tests if t.name == "sequential - direct"])
