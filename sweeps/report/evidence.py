"""What a claim's section is made of. Primary: its parts, each an effect pooled over the claim's
rows (pooled.py), and the claim's one verdict from them. Secondary: the row table, its tests
(each an effect's sign against the one the claim predicts, Holm-adjusted over the claim's
family) and each row's verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from ..domain.plan import setting_name, setting_order
from .pooled import MAX_SEEDS, POWER, Pooled, joint_power, joint_seeds
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


def kl_setting(tau: float, alpha: float = 1.0) -> str:
    return setting_name(1, "kl", tau, alpha)


def mse_setting(alpha: float = 1.0) -> str:
    return setting_name(1, "mse", None, alpha)


def tau_rank(tau: pd.Series) -> pd.Series:
    return tau.replace(math.inf, 1e12)  # inf after every finite tau; Spearman uses ranks


def paired_test(row, name, a: pd.Series, b: pd.Series, expected: int, decimals=1) -> Test:
    c: Paired = compare(a, b)
    return Test(row, name, c.d, c.p, expected, c.n, f"{name} {fmt(c.d, decimals, '+')}")


def fmt(x: float, decimals: int, sign: str = "") -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:{sign}.{decimals}f}"


def wide(part: pd.DataFrame, column: str, decimals: int, scale: float,
         test_step: float | None = None) -> dict:
    """Each setting's cell; ``test_step`` (accuracy: one test image, in points) adds the test
    set's binomial variance to the interval."""
    cells = {s: cell(g[column], decimals, scale, test_step) for s, g in part.groupby("setting")}
    return {s: cells[s] for s in sorted(cells, key=setting_order)}


def groups(students: pd.DataFrame):
    """The claim's rows: (student, noise, alpha) and its runs. alpha is never mixed: a grid of
    several gives one row per alpha."""
    for (student, noise, alpha), part in students.groupby(["student", "noise_rate", "alpha"],
                                                          dropna=False):
        yield (student, f"{noise:g}", f"{alpha:g}"), part


def row_cells(row: tuple) -> dict:
    return {"student": row[0], "noise": row[1], "alpha": row[2], "_row": row}


def primary(students: pd.DataFrame) -> pd.DataFrame:
    """The runs a claim's pooled estimate rests on: the paper states its claims at alpha = 1
    (rows at other alphas stay in the row table)."""
    return students[students.alpha.fillna(1.0) == 1.0]


def units(rows: dict[str, pd.Series]) -> pd.DataFrame:
    """Per-seed values (index seed) per row label -> the long frame pooled.pool takes."""
    frames = [pd.DataFrame({"row": label, "seed": v.index, "value": v.to_numpy(float)})
              for label, v in rows.items() if len(v)]
    if not frames:
        return pd.DataFrame(columns=["row", "seed", "value"])
    return pd.concat(frames, ignore_index=True)


def label(row: tuple) -> str:
    """A row as a pooled effect's notes name it: "g1 cnn-large>cnn-small noise=0.4"."""
    alpha = "" if row[2] in ("1", "nan") else f" a={row[2]}"
    return f"{row[0]} noise={row[1]}{alpha}"


def row_labels(runs: pd.DataFrame) -> list[str]:
    """Each run's row, labelled (the rows ``groups`` yields)."""
    return [label((s, f"{n:g}", f"{a:g}"))
            for s, n, a in zip(runs.student, runs.noise_rate, runs.alpha, strict=True)]


@dataclass
class Part:
    """One part of a claim: one effect, or several (one per comparator) where the claim says
    "every" (an intersection: it holds only where each does). ``margin``: a non-inferiority
    part (no worse than by margin) instead of a sign. ``secondary``: shown beside the verdict,
    never part of it (a comparison the paper reports but does not claim, or a weaker reading)."""

    name: str
    effects: list[Pooled]
    margin: float | None = None
    secondary: bool = False

    def verdicts(self, adjusted: dict[int, float]) -> list[str]:
        """Each effect's verdict: found at ALPHA each (intersection-union: no adjustment); a
        contrary finding only at ALPHA after Holm (``adjusted``: id -> Holm-adjusted p of the
        contrary test, over the family the effect is judged in)."""
        return [e.verdict(adjusted.get(id(e))) for e in self.effects]


def decide(parts: list[Part]) -> tuple[str, list[list[str]]]:
    """The claim's verdict from its primary parts: consistent when every effect of every part is
    (each at ALPHA: an intersection-union test needs no adjustment); inconsistent when any
    goes against the claim at ALPHA after Holm over the claim's effects; else inconclusive
    (pooled.decide_codes is the same rule on arrays, for the calibration simulation). A
    secondary part's effects get verdicts of their own, Holm over that part."""
    adjusted: dict[int, float] = {}
    for family in ([e for p in parts if not p.secondary and p.margin is None for e in p.effects],
                   *([e for e in p.effects] for p in parts if p.secondary and p.margin is None)):
        for e, q in zip(family, holm([e.p for e in family]), strict=True):
            adjusted[id(e)] = q
    for part in (p for p in parts if p.margin is not None):  # non-inferior's contrary branch
        for e, q in zip(part.effects, holm([e.p_inferior for e in part.effects]), strict=True):
            adjusted[id(e)] = q
    per_part = [part.verdicts(adjusted) for part in parts]
    flat = [v for part, vs in zip(parts, per_part, strict=True) if not part.secondary
            for v in vs]
    if not flat:
        return INCONCLUSIVE, per_part
    if INCONSISTENT in flat:
        return INCONSISTENT, per_part
    return (CONSISTENT if all(v == CONSISTENT for v in flat) else INCONCLUSIVE), per_part


def digits(e: Pooled, decimals: int) -> int:
    """Decimals an effect is printed to: a correlation or a log ratio at least 2; more (up to 4)
    where rounding would hide which side of 0 (or of -margin) a bound lies."""
    d = max(decimals, 2) if e.name.startswith(("rho", "log")) else decimals
    edge = 0.0 if e.margin is None else -e.expected * e.margin
    while d < 4 and any(not math.isnan(x) and x != edge and round(x, d) == round(edge, d)
                        for x in (e.low, e.high, e.estimate)):
        d += 1
    return d


def interval_text(e: Pooled, decimals: int) -> str:
    d = digits(e, decimals)
    if not e.tested:
        return fmt(e.estimate, d, "+")
    return f"{fmt(e.estimate, d, '+')} [{fmt(e.low, d, '+')}, {fmt(e.high, d, '+')}]"


def _untested(e: Pooled) -> str:
    if e.rows == 0 and e.seeds == 0:
        return f"{INCONCLUSIVE}: an arm is missing (no units)"
    if e.seeds < MIN_SEEDS:
        return f"{INCONCLUSIVE} at this n ({e.seeds} seed{'s' * (e.seeds != 1)})"
    return f"{INCONCLUSIVE}: every seed gives the same value (no test)"


def truth(e: Pooled) -> float:
    """What a claim's joint power assumes of an effect: the paper's value where it gives one;
    for non-inferiority a true difference of 0; else the effect's own detectable effect."""
    if e.margin is not None:
        return 0.0
    value = e.paper if e.paper is not None else e.detectable()
    return e.expected * abs(value)


def lead(parts: list[Part], verdicts: list[list[str]], decimals: int) -> pd.DataFrame:
    """The primary table: one line per effect (the seed as the unit), with its power."""
    out = []
    for part, vs in zip(parts, verdicts, strict=True):
        for e, v in zip(part.effects, vs, strict=True):
            d = digits(e, decimals)
            at = 0.0 if e.margin is not None else e.paper
            power = e.power(at) if e.tested and at is not None else math.nan
            if not e.tested:
                v = _untested(e)
            elif e.margin is not None:
                v = {CONSISTENT: f"non-inferior (margin {e.margin:g})",
                     INCONSISTENT: f"inferior by more than {e.margin:g}",
                     INCONCLUSIVE: "inconclusive"}[v]
            if part.secondary:
                v += " (secondary: not in the verdict)"
            out.append({
                "effect": e.name,
                "estimate [95% interval]": interval_text(e, decimals),
                "units": f"{e.seeds} seeds (mean over {e.rows} row{'s' * (e.rows != 1)})",
                "p (t over seeds)": ((p_text(e.p) + (" one-sided" if e.margin is not None
                                                     else "")) if e.tested else "no test"),
                "p sign-flip over seeds": p_text(e.p_flip) if not math.isnan(e.p_flip)
                else "-",
                f"detectable ({POWER:.0%} power)": fmt(e.detectable(), d)
                if e.tested and e.margin is None else "-",
                "paper's effect": "-" if e.paper is None else fmt(e.paper, max(d, 2), "+"),
                "power (at the paper's; similar: at 0)": "-" if math.isnan(power)
                else fmt(power, 2),
                f"seeds for {POWER:.0%} (same)": _seeds_text(e, at),
                "verdict": v,
            })
    table = pd.DataFrame(out)
    return table.set_index("effect") if not table.empty else table


def _seeds_text(e: Pooled, at: float | None) -> str:
    if at is None or not e.tested:
        return "-"
    n = e.seeds_for(at)
    return f"> {MAX_SEEDS}" if n is None else str(n)


def joint_notes(parts: list[Part]) -> list[str]:
    """The power of the claim as a whole (every primary effect found) and of a non-inferiority
    part's intersection, with the seeds that reach POWER where every assumed effect is the
    paper's (or 0 for non-inferiority)."""
    notes = []
    groups_ = [("the claim", [e for p in parts if not p.secondary for e in p.effects])]
    groups_ += [(f"'{p.name}' at every comparator", p.effects) for p in parts
                if p.margin is not None and len(p.effects) > 1]
    for what, effects in groups_:
        if len(effects) < 2 or not all(e.tested for e in effects):
            continue  # one effect: its own power, in its line
        truths = [truth(e) for e in effects]
        power = joint_power(effects, truths)
        if math.isnan(power):
            continue
        known = all(e.margin is not None or e.paper is not None for e in effects)
        given = [e.paper is not None for e in effects if e.margin is None]
        at = ("a true difference of 0 each" if not given else
              "each effect at the paper's value" if all(given) else
              "each effect at the paper's value where given, else at its own detectable effect")
        if given and len(given) < len(effects):
            at += " (non-inferiority: a true difference of 0)"
        text = (f"joint power of {what} (every one of its {len(effects)} effects found): "
                f"{power:.2f} at {min(e.seeds for e in effects)} seeds, {at}")
        if known:
            n = joint_seeds(effects, truths)
            text += (f"; {POWER:.0%} joint power at "
                     + (f"{n} seeds" if n else f"more than {MAX_SEEDS} seeds"))
        notes.append(text + " (simulated with the effects' covariance over seeds)")
    return notes


def patterns(parts: list[Part]) -> dict[str, str]:
    """Row label -> the effects every seed of it contradicts (a difference against the claim's
    sign, or a trend in the same non-monotone order)."""
    out: dict[str, list[str]] = {}
    for e in (e for part in parts for e in part.effects):
        for row in e.contrary:
            out.setdefault(row, []).append(e.name)
        for row, value in e.steady:
            if e.name.startswith("rho(tau") and abs(value) < 1 and row not in e.contrary:
                out.setdefault(row, []).append(f"{e.name} {value:+.2f}, non-monotone")
    return {row: "; ".join(names) for row, names in out.items()}


def flags(parts: list[Part]) -> list[str]:
    """What the estimate alone would hide: rows every seed contradicts, rows and seeds left
    out, seeds that all give the same value."""
    notes = []
    for e in (e for part in parts for e in part.effects):
        if e.contrary:
            notes.append(f"{e.name}: every seed goes against the claim in "
                         + "; ".join(e.contrary))
        trend = e.name.startswith("rho(tau")
        for row, value in e.steady:
            what = ("reproducibly non-monotone: every seed orders the taus alike"
                    if trend and abs(value) < 1 else "every seed gives the same value")
            notes.append(f"{e.name} = {value:+.2f} in {row}: {what}")
        if e.left_out:
            notes.append(f"{e.name}: left out: " + "; ".join(e.left_out))
        if not e.tested and e.seeds >= MIN_SEEDS:
            notes.append(f"{e.name}: every seed gives the same effect: no test (a zero-width "
                         "interval proves nothing)")
    seeds = [e.seeds for part in parts for e in part.effects if e.tested]
    if seeds and min(seeds) <= 5:
        n = min(seeds)
        notes.append(f"p sign-flip over seeds: a robustness check beside the t, never the "
                     f"verdict (with {n} seeds it cannot go below {2 / 2 ** n:.3g})")
    return notes


def section(title: str, rows: list[dict], tests: list[Test], notes: list[str],
            verdicts: dict | None = None, parts: list[Part] | None = None,
            decimals: int = 2) -> Section:
    """The claim's section: its verdict from ``parts`` (pooled effects, printed first), then
    the row table with each row's verdict from its tests (after Holm over the family), each
    row's tests printed beside it. ``verdicts``: row -> a verdict rule of its own (a row whose
    rule is not one test's sign)."""
    for t, q in zip(tests, holm([t.p for t in tests]), strict=True):
        t.p_holm = q
    for r in rows:
        mine = [t for t in tests if t.row == r["_row"]]
        own = (verdicts or {}).get(r["_row"])
        r["tests"] = "; ".join(t.text() for t in mine) or "no test: an arm is missing"
        r["verdict"] = own(mine) if own else combine([t.verdict() for t in mine])
        seeds = min((t.seeds for t in mine), default=0)
        if r["verdict"] == INCONCLUSIVE and not mine:
            r["verdict"] = f"{INCONCLUSIVE}: an arm is missing"
        elif r["verdict"] == INCONCLUSIVE and seeds < MIN_SEEDS:
            r["verdict"] = f"{INCONCLUSIVE} at this n ({seeds} seed{'s' * (seeds != 1)})"
    parts = [p for p in parts or [] if p.effects]
    reproducible = patterns(parts)
    for r in rows:  # a row every seed contradicts is flagged as such, not "inconclusive"
        found = reproducible.get(r.pop("_label", None) or label(r["_row"]))
        if found and r["verdict"].split()[0] != INCONSISTENT:
            r["verdict"] = f"contrary in every seed: {found}"
    words = [r["verdict"].split()[0] for r in rows]
    overall, per_part = decide(parts)
    if rows:  # how the rows add up to it
        overall += (f" (rows: {words.count(CONSISTENT)} of {len(rows)} consistent, "
                    f"{words.count(INCONSISTENT)} inconsistent, {words.count('contrary')} "
                    "contrary in every seed)")
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "_row"} for r in rows])
    if not table.empty:
        table = table.set_index(table.columns[0])
    family = sum(not math.isnan(t.p) for t in tests)
    notes = flags(parts) + joint_notes(parts) + notes + [
        "verdict: from the effects above, the seed as the unit (each seed's effect the mean over "
        "the claim's rows; a t over seeds, its interval the same test's; docs/claims.md, 'the "
        "verdict rule'); the row "
        f"table is secondary evidence, its verdicts at {ALPHA:g} after Holm over this claim's "
        f"{family} row tests; none from fewer than {MIN_SEEDS} seeds"]
    return Section(title, table, notes, verdict=overall, lead=lead(parts, per_part, decimals),
                   effects=[e for part in parts for e in part.effects])
