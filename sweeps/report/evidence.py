"""What a claim's table is made of: its tests (each an effect's sign against the one the claim
predicts, Holm-adjusted over the claim's family) and the rows and verdicts built from them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from ..plan import setting_name, setting_order
from .stats import (
    ALPHA,
    CONSISTENT,
    INCONCLUSIVE,
    INCONSISTENT,
    MIN_SEEDS,
    Paired,
    cell,
    combine,
    compare,
    holm,
    p_text,
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


# ---- pieces of every claim ----------------------------------------------------------------
def seeds_of(part: pd.DataFrame) -> int:
    """The fewest seeds behind any setting of the group: what its tests rest on."""
    return int(part.groupby("setting").seed.nunique().min()) if len(part) else 0


def by_seed(part: pd.DataFrame, setting: str, column: str, scale: float = 1) -> pd.Series:
    one = part[part.setting == setting]
    return one.groupby("seed")[column].mean() * scale


def kl_taus(part: pd.DataFrame) -> list[float]:
    return sorted(part[part.loss == "kl"].tau.dropna().unique())


def kl_setting(tau: float) -> str:
    return setting_name(1, "kl", tau, None)


def tau_rank(tau: pd.Series) -> pd.Series:
    return tau.replace(math.inf, 1e12)  # inf after every finite tau; Spearman uses ranks


def paired_test(row, name, a: pd.Series, b: pd.Series, expected: int, decimals=1) -> Test:
    c: Paired = compare(a, b)
    return Test(row, name, c.d, c.p, expected, c.n, f"{name} {fmt(c.d, decimals, '+')}")


def fmt(x: float, decimals: int, sign: str = "") -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:{sign}.{decimals}f}"


def wide(part: pd.DataFrame, column: str, decimals: int, scale: float) -> dict:
    cells = {s: cell(g[column], decimals, scale) for s, g in part.groupby("setting")}
    return {s: cells[s] for s in sorted(cells, key=setting_order)}


def groups(students: pd.DataFrame):
    for (student, noise), part in students.groupby(["student", "noise_rate"]):
        yield (student, f"{noise:g}"), part


def section(title: str, rows: list[dict], tests: list[Test], notes: list[str],
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
