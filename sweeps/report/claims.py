"""The paper's claims (C1-C6: docs/claims.md states them, with the paper's numbers and sources)
as tables, each row a group the claim speaks of (a student, i.e. architecture and lineage, at
one noise rate) and each with the verdict its data
supports: consistent, inconsistent, or inconclusive at this n.

Every verdict rests on named tests, Holm-adjusted over the claim's family (every test of every
row), at ALPHA; no test from fewer than MIN_SEEDS seeds. The arms a test compares are fixed in
advance by the paper (the grid's smallest and largest tau, MSE, tau nearest 0.5), never picked
on the test set. A claim's verdict is consistent only where every row's is, and inconsistent
where any row's is.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .evidence import (
    Test,
    by_seed,
    fmt,
    groups,
    kl_setting,
    kl_taus,
    paired_test,
    section,
    seeds_of,
    tau_rank,
    wide,
)
from .load import distance_column
from .stats import (
    CONSISTENT,
    INCONCLUSIVE,
    INCONSISTENT,
    MIN_SEEDS,
    SIMILAR_MARGIN,
    Paired,
    cell,
    combine,
    compare,
    correlation,
    resolution,
)
from .tables import Section


def claims(df: pd.DataFrame) -> list[Section]:
    """C1-C6 from the done trials."""
    students = df[df.generation > 0]
    if students.empty:
        return []
    return [c(students, df) for c in (c1, c2, c3, c4, c5, c6)]


# ---- the claims ------------------------------------------------------------------------------
def c1(students: pd.DataFrame, _df) -> Section:
    """C1: logit distance falls as tau grows; MSE gives the smallest."""
    col, what = distance_column(students)
    rows, tests = [], []
    for row, part in groups(students):
        taus = kl_taus(part)
        kl = part[part.loss == "kl"]
        rows.append({"student": row[0], "noise": row[1], **wide(part, col, 2, 1), "_row": row})
        if len(taus) > 1:
            c = correlation(tau_rank(kl.tau), kl[col], seeds_of(kl))
            tests.append(Test(row, "Spearman(tau, distance)", c.spearman, c.p, -1, seeds_of(kl),
                              f"rho={fmt(c.spearman, 2, '+')} over {c.n}"))
        if (part.loss == "mse").any():
            mse = by_seed(part, "mse", col)
            tests += [paired_test(row, f"mse - {kl_setting(t)}", mse,
                                  by_seed(part, kl_setting(t), col), -1, 2) for t in taus]
    return section(f"C1 logit distance ({what}) falls as tau grows; MSE gives the smallest",
                    rows, tests, ["cells: the distance, mean ± 95% t-interval over seeds"])


def c2(students: pd.DataFrame, _df) -> Section:
    """C2: accuracy rises with tau (alpha = 1, clean labels); MSE similar to or better than
    the best KL: MSE - KL's 95% interval above -SIMILAR_MARGIN for every tau."""
    _, decimals = resolution(students)
    clean = students[students.noise_rate == 0]
    rows, tests, own = [], [], {}
    for row, part in groups(clean):
        taus, kl = kl_taus(part), part[part.loss == "kl"]
        rows.append({"student": row[0], "noise": row[1],
                     **wide(part, "test_acc", decimals, 100), "_row": row})
        if len(taus) > 1:
            c = correlation(tau_rank(kl.tau), kl.test_acc, seeds_of(kl))
            tests.append(Test(row, "Spearman(tau, accuracy)", c.spearman, c.p, +1, seeds_of(kl),
                              f"rho={fmt(c.spearman, 2, '+')} over {c.n}"))
        if (part.loss == "mse").any():
            mse = by_seed(part, "mse", "test_acc", 100)
            similar = [compare(mse, by_seed(part, kl_setting(t), "test_acc", 100)) for t in taus]
            tests += [Test(row, f"mse - {kl_setting(t)}", c.d, c.p, +1, c.n,
                           f"mse - {kl_setting(t)} {fmt(c.d, decimals, '+')}")
                      for t, c in zip(taus, similar, strict=True)]
            own[row] = _similar_rule(similar)
    return section(
        "C2 accuracy rises with tau; MSE is similar to or better than the best KL (noise 0)",
        rows, tests,
        ["cells: test accuracy %, mean ± 95% t-interval over seeds",
         f"'similar or better': for every tau the 95% interval of MSE - KL lies above "
         f"-{SIMILAR_MARGIN:g} point (non-inferiority); inconsistent where some KL tau is "
         "better (Holm); the tau trend must hold too"], own)


def _similar_rule(similar: list[Paired]):
    def rule(tests: list[Test]) -> str:
        trend = [t.verdict() for t in tests if t.name.startswith("Spearman")]
        worse = any(t.verdict() == INCONSISTENT for t in tests if t.name.startswith("mse"))
        if worse:
            return INCONSISTENT
        fine = all(c.n >= MIN_SEEDS and (c.low if not c.flat else c.d) > -SIMILAR_MARGIN
                   for c in similar)
        return combine(trend + [CONSISTENT if fine else INCONCLUSIVE])
    return rule


def c3(students: pd.DataFrame, _df) -> Section:
    """C3: across runs of one teacher-student pair, smaller distance goes with higher accuracy."""
    col, what = distance_column(students)
    rows, tests = [], []
    for row, part in groups(students):
        c = correlation(part[col], part.test_acc, part.seed.nunique())
        rows.append({"student": row[0], "noise": row[1], "Pearson r": fmt(c.pearson, 2, "+"),
                     "Spearman rho": fmt(c.spearman, 2, "+"), "runs": c.n,
                     "seeds": part.seed.nunique(), "_row": row})
        tests.append(Test(row, "Spearman", c.spearman, c.p, -1, int(part.seed.nunique()),
                          f"rho={fmt(c.spearman, 2, '+')}"))
    return section(f"C3 smaller logit distance ({what}) goes with higher accuracy, within each "
                    "teacher-student pair", rows, tests,
                    ["over every student run of the pair (all settings); runs of one seed share "
                     "a teacher, so the p-value is optimistic"])


def c4(students: pd.DataFrame, _df) -> Section:
    """C4: MSE keeps the teacher's feature shape (higher CKA than KL at the smallest tau),
    shrunk (feature norm below the teacher's)."""
    have = students.dropna(subset=["train_feature_cka"])
    rows, tests = [], []
    for row, part in groups(have):
        part = part.assign(norm_ratio=part.train_feature_norm / part.teacher_feature_norm)
        rows.append({"student": row[0], "noise": row[1],
                     **{f"CKA {s}": v for s, v in wide(part, "train_feature_cka", 2, 1).items()},
                     "mse ||r_s||/||r_t||": cell(part[part.loss == "mse"].norm_ratio, 2, 1),
                     "_row": row})
        taus = kl_taus(part)
        if taus and (part.loss == "mse").any():
            mse = by_seed(part, "mse", "train_feature_cka")
            smallest = by_seed(part, kl_setting(taus[0]), "train_feature_cka")
            tests.append(paired_test(row, f"CKA mse - {kl_setting(taus[0])}", mse, smallest,
                                     +1, 3))
            ratio = np.log(by_seed(part, "mse", "norm_ratio"))
            tests.append(paired_test(row, "log norm ratio mse", ratio, ratio * 0, -1, 2))
    notes = ["CKA: linear CKA of the student's and the teacher's penultimate features on the "
             "training set (1 = the same shape up to rotation and scale); the projections "
             "figure shows the same runs"]
    if have.empty:
        notes.append("no CKA in these results (trained before it was measured): not testable")
    return section("C4 MSE keeps the teacher's penultimate shape (CKA above KL's at the "
                    "smallest tau), shrunk (norm ratio below 1)", rows, tests, notes)


def c5(students: pd.DataFrame, _df) -> Section:
    """C5: with noisy labels (teacher trained on them), a small tau (<= 1, the grid's nearest to
    0.5) beats the largest tau and MSE."""
    _, decimals = resolution(students)
    noisy = students[students.noise_rate > 0]
    rows, tests, notes = [], [], []
    for row, part in groups(noisy):
        taus = kl_taus(part)
        small = min((t for t in taus if t <= 1), key=lambda t: abs(math.log(t / 0.5)),
                    default=None)
        # a generation-1 student's teacher is the noise-trained generation 0, one per seed; a
        # later generation's teachers differ by setting (the accuracy tables show them)
        teacher = (cell(part.drop_duplicates("teacher_key").teacher_acc, decimals)
                   if (part.generation == 1).all() else "per setting")
        rows.append({"student": row[0], "noise": row[1],
                     **wide(part, "test_acc", decimals, 100), "teacher": teacher,
                     **{f"agreement {s}": v for s, v in
                        wide(part, "test_agreement", decimals, 100).items()},
                     "still rising": f"{int(part.rising.sum())} of {len(part)}",
                     "did not learn": f"{int(part.stuck.sum())} of {len(part)}", "_row": row})
        if small is None:
            continue
        acc = by_seed(part, kl_setting(small), "test_acc", 100)
        if len(taus) > 1 and taus[-1] > 1:
            tests.append(paired_test(row, f"{kl_setting(small)} - {kl_setting(taus[-1])}", acc,
                                      by_seed(part, kl_setting(taus[-1]), "test_acc", 100), +1,
                                      decimals))
        if (part.loss == "mse").any():
            tests.append(paired_test(row, f"{kl_setting(small)} - mse", acc,
                                      by_seed(part, "mse", "test_acc", 100), +1, decimals))
    if not noisy.empty and not any(t <= 1 for t in kl_taus(noisy)):
        notes.append("not testable: the grid has no kl tau <= 1 at noise > 0")
    return section(
        "C5 with noisy labels, a small tau (<= 1) beats a large tau and MSE", rows, tests,
        notes + ["cells: test accuracy % (the teacher's own too) and top-1 agreement with the "
                 "teacher on the test set, mean ± 95% t-interval over seeds; 'still rising' "
                 "(see convergence) warns that a gap may be under-training"])


def c6(students: pd.DataFrame, df: pd.DataFrame) -> Section:
    """C6: teacher -> intermediate -> student beats teacher -> student directly, and loses to an
    intermediate trained alone -> student (paper: 74.52 vs 74.24 and 74.84)."""
    _, decimals = resolution(students)
    rows, tests = [], []
    for chain in sorted(set(students[students.generation == 2].chain)):
        t, m, s = chain.split(">")
        arms = {"sequential": (2, chain), "direct": (1, f"{t}>{s}"),
                "intermediate alone": (1, f"{m}>{s}")}
        for (setting, noise), part in students.groupby(["setting", "noise_rate"]):
            acc = {a: by_seed(part[(part.generation == g) & (part.chain == c)], setting,
                               "test_acc", 100) for a, (g, c) in arms.items()}
            if acc["sequential"].empty:
                continue
            row = (chain, setting, f"{noise:g}")
            diffs = {}
            for other, expected in (("direct", +1), ("intermediate alone", -1)):
                if acc[other].empty:
                    continue
                test = paired_test(row, f"sequential - {other}", acc["sequential"],
                                    acc[other], expected, decimals)
                tests.append(test)
                d = (acc["sequential"] - acc[other]).dropna()
                diffs[f"sequential - {other}"] = cell(d, decimals, 1)
            rows.append({"sequential chain": chain, "setting": setting, "noise": row[2],
                         **{a: cell(v, decimals, 1) for a, v in acc.items() if not v.empty},
                         **diffs, "_row": row})
    return section(
        "C6 sequential distillation beats direct, and loses to an intermediate trained alone",
        rows, tests,
        ["cells: test accuracy % of the final student per arm, and the per-seed differences "
         "(below 3 seeds each seed's difference), matched on setting, noise and seed"])
