"""The paper's claims (shared/paper.md, C1-C6) as tables, each row a group the claim speaks of
(a student, i.e. architecture and lineage, at one noise rate) and each with the verdict its data
supports: consistent, inconsistent, or inconclusive at this n.

Every verdict rests on named tests, Holm-adjusted over the claim's family (every test of every
row), at ALPHA; no test from fewer than MIN_SEEDS seeds. The arms a test compares are fixed in
advance by the paper (the grid's smallest and largest tau, MSE, tau nearest 0.5), never picked
on the test set. A claim's verdict is consistent only where every row's is, and inconsistent
where any row's is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..plan import setting_name, setting_order
from .load import distance_column
from .stats import (
    ALPHA,
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
    holm,
    p_text,
    resolution,
    verdict,
)
from .tables import Section


@dataclass
class Test:
    """One test of a claim: the observed effect's sign against the one the claim predicts."""

    row: tuple
    name: str
    effect: float  # a difference or a correlation: its sign is what the claim predicts
    p: float  # raw two-sided p (nan: no test)
    expected: int  # +1 or -1
    seeds: int
    shown: str  # the effect as printed
    p_holm: float = math.nan

    def verdict(self) -> str:
        return verdict(self.effect, self.p_holm, self.expected, self.seeds)

    def text(self) -> str:
        if self.seeds < MIN_SEEDS:
            return f"{self.shown}, no test (n={self.seeds} seeds)"
        if math.isnan(self.p_holm):
            return f"{self.shown}, no test (no spread)"
        return f"{self.shown}, p_Holm={p_text(self.p_holm)}"


def claims(df: pd.DataFrame) -> list[Section]:
    """C1-C6 from the done trials."""
    students = df[df.generation > 0]
    if students.empty:
        return []
    return [c(students, df) for c in (c1, c2, c3, c4, c5, c6)]


# ---- shared pieces ---------------------------------------------------------------------------
def _seeds(part: pd.DataFrame) -> int:
    """The fewest seeds behind any setting of the group: what its tests rest on."""
    return int(part.groupby("setting").seed.nunique().min()) if len(part) else 0


def _by_seed(part: pd.DataFrame, setting: str, column: str, scale: float = 1) -> pd.Series:
    one = part[part.setting == setting]
    return one.groupby("seed")[column].mean() * scale


def _kl_taus(part: pd.DataFrame) -> list[float]:
    return sorted(part[part.loss == "kl"].tau.dropna().unique())


def _kl(tau: float) -> str:
    return setting_name(1, "kl", tau, None)


def _tau_rank(tau: pd.Series) -> pd.Series:
    return tau.replace(math.inf, 1e12)  # inf after every finite tau; Spearman uses ranks


def _paired_test(row, name, a: pd.Series, b: pd.Series, expected: int, decimals=1) -> Test:
    c: Paired = compare(a, b)
    return Test(row, name, c.d, c.p, expected, c.n, f"{name} {_fmt(c.d, decimals, '+')}")


def _fmt(x: float, decimals: int, sign: str = "") -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:{sign}.{decimals}f}"


def _wide(part: pd.DataFrame, column: str, decimals: int, scale: float) -> dict:
    cells = {s: cell(g[column], decimals, scale) for s, g in part.groupby("setting")}
    return {s: cells[s] for s in sorted(cells, key=setting_order)}


def _groups(students: pd.DataFrame):
    for (student, noise), part in students.groupby(["student", "noise_rate"]):
        yield (student, f"{noise:g}"), part


def _section(title: str, rows: list[dict], tests: list[Test], notes: list[str],
             verdicts: dict | None = None) -> Section:
    """The claim's table with each row's verdict from its tests (after Holm over the family),
    each row's tests printed beside it, and the claim's verdict. ``verdicts``: row -> a
    verdict of its own (a claim whose rule is not one test's sign)."""
    for t, q in zip(tests, holm([t.p for t in tests]), strict=True):
        t.p_holm = q
    for r in rows:
        mine = [t for t in tests if t.row == r["_row"]]
        own = (verdicts or {}).get(r["_row"])
        r["tests"] = "; ".join(t.text() for t in mine) or "no test: an arm is missing"
        r["verdict"] = own(mine) if own else combine([t.verdict() for t in mine])
        seeds = min((t.seeds for t in mine), default=0)
        if r["verdict"] == INCONCLUSIVE and seeds < MIN_SEEDS:
            r["verdict"] = f"{INCONCLUSIVE} at this n ({seeds} seed{'s' * (seeds != 1)})"
    words = [r["verdict"].split()[0] for r in rows]
    overall = combine(words)
    if rows:  # how the rows add up to it
        overall += (f" ({words.count(CONSISTENT)} of {len(rows)} rows consistent, "
                    f"{words.count(INCONSISTENT)} inconsistent)")
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "_row"} for r in rows])
    if not table.empty:
        table = table.set_index(table.columns[0])
    family = sum(not math.isnan(t.p) for t in tests)
    notes = notes + [f"verdicts at {ALPHA:g} after Holm over this claim's {family} tests; none "
                     f"from fewer than {MIN_SEEDS} seeds"]
    return Section(title, table, notes, verdict=overall)


# ---- the claims ------------------------------------------------------------------------------
def c1(students: pd.DataFrame, _df) -> Section:
    """C1: logit distance falls as tau grows; MSE gives the smallest."""
    col, what = distance_column(students)
    rows, tests = [], []
    for row, part in _groups(students):
        taus = _kl_taus(part)
        kl = part[part.loss == "kl"]
        rows.append({"student": row[0], "noise": row[1], **_wide(part, col, 2, 1), "_row": row})
        if len(taus) > 1:
            c = correlation(_tau_rank(kl.tau), kl[col], _seeds(kl))
            tests.append(Test(row, "Spearman(tau, distance)", c.spearman, c.p, -1, _seeds(kl),
                              f"rho={_fmt(c.spearman, 2, '+')} over {c.n}"))
        if (part.loss == "mse").any():
            mse = _by_seed(part, "mse", col)
            tests += [_paired_test(row, f"mse - {_kl(t)}", mse, _by_seed(part, _kl(t), col), -1,
                                   2) for t in taus]
    return _section(f"C1 logit distance ({what}) falls as tau grows; MSE gives the smallest",
                    rows, tests, ["cells: the distance, mean ± 95% t-interval over seeds"])


def c2(students: pd.DataFrame, _df) -> Section:
    """C2: accuracy rises with tau (alpha = 1, clean labels); MSE similar to or better than
    the best KL: MSE - KL's 95% interval above -SIMILAR_MARGIN for every tau."""
    _, decimals = resolution(students)
    clean = students[students.noise_rate == 0]
    rows, tests, own = [], [], {}
    for row, part in _groups(clean):
        taus, kl = _kl_taus(part), part[part.loss == "kl"]
        rows.append({"student": row[0], "noise": row[1],
                     **_wide(part, "test_acc", decimals, 100), "_row": row})
        if len(taus) > 1:
            c = correlation(_tau_rank(kl.tau), kl.test_acc, _seeds(kl))
            tests.append(Test(row, "Spearman(tau, accuracy)", c.spearman, c.p, +1, _seeds(kl),
                              f"rho={_fmt(c.spearman, 2, '+')} over {c.n}"))
        if (part.loss == "mse").any():
            mse = _by_seed(part, "mse", "test_acc", 100)
            similar = [compare(mse, _by_seed(part, _kl(t), "test_acc", 100)) for t in taus]
            tests += [Test(row, f"mse - {_kl(t)}", c.d, c.p, +1, c.n,
                           f"mse - {_kl(t)} {_fmt(c.d, decimals, '+')}")
                      for t, c in zip(taus, similar, strict=True)]
            own[row] = _similar_rule(similar)
    return _section(
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
    for row, part in _groups(students):
        c = correlation(part[col], part.test_acc, part.seed.nunique())
        rows.append({"student": row[0], "noise": row[1], "Pearson r": _fmt(c.pearson, 2, "+"),
                     "Spearman rho": _fmt(c.spearman, 2, "+"), "runs": c.n,
                     "seeds": part.seed.nunique(), "_row": row})
        tests.append(Test(row, "Spearman", c.spearman, c.p, -1, int(part.seed.nunique()),
                          f"rho={_fmt(c.spearman, 2, '+')}"))
    return _section(f"C3 smaller logit distance ({what}) goes with higher accuracy, within each "
                    "teacher-student pair", rows, tests,
                    ["over every student run of the pair (all settings); runs of one seed share "
                     "a teacher, so the p-value is optimistic"])


def c4(students: pd.DataFrame, _df) -> Section:
    """C4: MSE keeps the teacher's feature shape (higher CKA than KL at the smallest tau),
    shrunk (feature norm below the teacher's)."""
    have = students.dropna(subset=["train_feature_cka"])
    rows, tests = [], []
    for row, part in _groups(have):
        part = part.assign(norm_ratio=part.train_feature_norm / part.teacher_feature_norm)
        rows.append({"student": row[0], "noise": row[1],
                     **{f"CKA {s}": v for s, v in _wide(part, "train_feature_cka", 2, 1).items()},
                     "mse ||r_s||/||r_t||": cell(part[part.loss == "mse"].norm_ratio, 2, 1),
                     "_row": row})
        taus = _kl_taus(part)
        if taus and (part.loss == "mse").any():
            mse = _by_seed(part, "mse", "train_feature_cka")
            tests.append(_paired_test(row, f"CKA mse - {_kl(taus[0])}", mse,
                                      _by_seed(part, _kl(taus[0]), "train_feature_cka"), +1, 3))
            ratio = np.log(_by_seed(part, "mse", "norm_ratio"))
            tests.append(_paired_test(row, "log norm ratio mse", ratio, ratio * 0, -1, 2))
    notes = ["CKA: linear CKA of the student's and the teacher's penultimate features on the "
             "training set (1 = the same shape up to rotation and scale); the projections "
             "figure shows the same runs"]
    if have.empty:
        notes.append("no CKA in these results (trained before it was measured): not testable")
    return _section("C4 MSE keeps the teacher's penultimate shape (CKA above KL's at the "
                    "smallest tau), shrunk (norm ratio below 1)", rows, tests, notes)


def c5(students: pd.DataFrame, _df) -> Section:
    """C5: with noisy labels (teacher trained on them), a small tau (<= 1, the grid's nearest to
    0.5) beats the largest tau and MSE."""
    _, decimals = resolution(students)
    noisy = students[students.noise_rate > 0]
    rows, tests, notes = [], [], []
    for row, part in _groups(noisy):
        taus = _kl_taus(part)
        small = min((t for t in taus if t <= 1), key=lambda t: abs(math.log(t / 0.5)),
                    default=None)
        # a generation-1 student's teacher is the noise-trained generation 0, one per seed; a
        # later generation's teachers differ by setting (the accuracy tables show them)
        teacher = (cell(part.drop_duplicates("teacher_key").teacher_acc, decimals)
                   if (part.generation == 1).all() else "per setting")
        rows.append({"student": row[0], "noise": row[1],
                     **_wide(part, "test_acc", decimals, 100), "teacher": teacher,
                     **{f"agreement {s}": v for s, v in
                        _wide(part, "test_agreement", decimals, 100).items()},
                     "still rising": f"{int(part.rising.sum())} of {len(part)}",
                     "did not learn": f"{int(part.stuck.sum())} of {len(part)}", "_row": row})
        if small is None:
            continue
        acc = _by_seed(part, _kl(small), "test_acc", 100)
        if len(taus) > 1 and taus[-1] > 1:
            tests.append(_paired_test(row, f"{_kl(small)} - {_kl(taus[-1])}", acc,
                                      _by_seed(part, _kl(taus[-1]), "test_acc", 100), +1,
                                      decimals))
        if (part.loss == "mse").any():
            tests.append(_paired_test(row, f"{_kl(small)} - mse", acc,
                                      _by_seed(part, "mse", "test_acc", 100), +1, decimals))
    if not noisy.empty and not any(t <= 1 for t in _kl_taus(noisy)):
        notes.append("not testable: the grid has no kl tau <= 1 at noise > 0")
    return _section(
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
            acc = {a: _by_seed(part[(part.generation == g) & (part.chain == c)], setting,
                               "test_acc", 100) for a, (g, c) in arms.items()}
            if acc["sequential"].empty:
                continue
            row = (chain, setting, f"{noise:g}")
            diffs = {}
            for other, expected in (("direct", +1), ("intermediate alone", -1)):
                if acc[other].empty:
                    continue
                test = _paired_test(row, f"sequential - {other}", acc["sequential"],
                                    acc[other], expected, decimals)
                tests.append(test)
                d = (acc["sequential"] - acc[other]).dropna()
                diffs[f"sequential - {other}"] = cell(d, decimals, 1)
            rows.append({"sequential chain": chain, "setting": setting, "noise": row[2],
                         **{a: cell(v, decimals, 1) for a, v in acc.items() if not v.empty},
                         **diffs, "_row": row})
    return _section(
        "C6 sequential distillation beats direct, and loses to an intermediate trained alone",
        rows, tests,
        ["cells: test accuracy % of the final student per arm, and the per-seed differences "
         "(below 3 seeds each seed's difference), matched on setting, noise and seed"])
