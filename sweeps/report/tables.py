"""The report's tables as Sections (a title, a table of printed cells, notes, the MLflow runs
behind each cell): test accuracy per chain and noise rate with paired comparisons, the trials
not in them, convergence, and the same trials across clusters. The claims are in claims.py."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from ..domain.plan import setting_order
from ..domain.record import TrialState
from .load import chain_frame, full_chains
from .paper import published
from .stats import (
    MIN_SEEDS,
    RISING_IMAGES,
    accuracy_interval,
    cell,
    compare,
    holm,
    p_text,
    resolution,
)


@dataclass
class Section:
    title: str
    table: pd.DataFrame  # printed cells; the index names the rows
    notes: list[str] = field(default_factory=list)
    runs: dict = field(default_factory=dict)  # (row, column) -> MLflow run ids behind the cell
    verdict: str | None = None  # a claim's, where the section is one
    lead: pd.DataFrame | None = None  # a claim's pooled effects, above its row table
    effects: list = field(default_factory=list)  # those effects (pooled.Pooled)
    # the cells' numbers, unrounded, indexed by (row, column): estimate, low, high, n, p (the
    # CSV's columns; export.py reads a cell's printed numbers where this has none)
    numbers: pd.DataFrame | None = None
    # a sequential study's claim: seeds, decided_at_look, boundary, alpha spent (sequential.py)
    sequential: dict | None = None

    def text(self) -> str:
        lines = [f"== {self.title}" + (f": {self.verdict.upper()}" if self.verdict else "")]
        if self.lead is not None and not self.lead.empty:
            lines.append(self.lead.to_string())
        if not self.table.empty:
            lines.append(self.table.fillna("-").to_string())
        return "\n".join(lines + [f"   {n}" for n in self.notes])


def _settings(index) -> list[str]:
    return sorted(index, key=setting_order)


def _runs(frame: pd.DataFrame, row: str, column: str) -> dict:
    if "mlflow_run_id" not in frame:
        return {}
    ids = frame.dropna(subset=["mlflow_run_id"]).groupby([row, column]).mlflow_run_id
    return {k: sorted(v) for k, v in ids.agg(list).items()}


def accuracy(df: pd.DataFrame) -> list[Section]:
    """Per chain and noise rate (and input, when several): accuracy by setting (rows) and
    generation (columns), each generation's architecture alone as a row; then each setting
    against the architecture alone over matched seeds."""
    several = df.origin.nunique() > 1
    step, decimals = resolution(df)
    grain = "" if step is None else f"; one test image = {step:.2f} points"
    out = []
    for chain in full_chains(df):
        frame = chain_frame(df, chain)
        for keys, part in frame.groupby(["origin", "noise_rate"] if several else ["noise_rate"]):
            keys = keys if isinstance(keys, tuple) else (keys,)
            where = f"noise={keys[-1]:g}" + (f", {keys[0]}" if several else "")
            table = part.pivot_table(index="row", columns="column", values="test_acc",
                                     aggfunc=lambda v: cell(v, decimals, test_step=step))
            table = table.reindex(_settings(table.index))
            table = table[sorted(table.columns, key=lambda c: int(c.split()[0][1:]))]
            table.columns.name, table.index.name = None, "setting"
            quoted = _with_paper(table, chain, part.dataset.iloc[0], keys[-1])
            numbers = interval_numbers(part, "row", "column", "test_acc", step)
            out.append(Section(
                f"{chain} ({where}): test accuracy %, mean ± 95% interval (seeds and the test "
                f"set's binomial variance; n "
                f"seeds; below {MIN_SEEDS} seeds each seed's value){grain}"
                + ("; [paper X]: the paper's published accuracy for the same dataset, pair, "
                   "tau and alpha (docs/claims.md, its sources)" if quoted else ""),
                table, comparisons(part, decimals), _runs(part, "row", "column"),
                numbers=numbers))
    return out


def interval_numbers(frame: pd.DataFrame, row: str, column: str, value: str,
                     step: float | None, scale: float = 100) -> pd.DataFrame:
    """Each (row, column) cell's mean, 95% interval and n as stats.cell prints them
    (accuracy_interval: no interval below MIN_SEEDS), unrounded, the interval clipped to what a
    share can be, [0, 100] (as the figures' bands): a Section's numbers."""
    out = {}
    for key, values in frame.groupby([row, column])[value]:
        mean, half, n = accuracy_interval(values, step, scale)
        out[key] = {"estimate": mean, "low": max(mean - half, 0.0),
                    "high": min(mean + half, scale), "n": n, "p": math.nan}
    return pd.DataFrame.from_dict(out, orient="index")


def _with_paper(table: pd.DataFrame, chain: str, dataset: str, noise_rate: float) -> bool:
    """Append "[paper X]" to each cell the paper reports (paper.published); whether any."""
    models, quoted = chain.split(">"), False
    for column in table.columns:
        g = int(column.split()[0][1:])
        for setting in table.index:
            lineage = models[g] if setting == "alone (ce)" else ">".join(models[: g + 1])
            value = published(dataset, lineage, setting, noise_rate)
            if value is not None and isinstance(table.at[setting, column], str):
                table.at[setting, column] += f" [paper {value:.2f}]"
                quoted = True
    return quoted


def comparisons(part: pd.DataFrame, decimals: int = 2) -> list[str]:
    """Per generation >= 1: each setting against the architecture alone, as the mean difference
    over matched seeds with the paired t-test's p, Holm-adjusted over the table's tests. No
    setting is tested against "the best": picking the best on the test set and then testing
    it would test what the pick already chose."""
    tests = []  # (column, setting, Paired)
    for column, gen in part[part.g > 0].groupby("column"):
        acc = gen.pivot_table(index="seed", columns="row", values="test_acc") * 100
        if "alone (ce)" not in acc:
            continue
        for s in _settings(c for c in acc.columns if c != "alone (ce)"):
            tests.append((column, s, compare(acc[s], acc["alone (ce)"])))
    if not tests:
        return []
    adjusted = holm([t[2].p for t in tests])
    family = sum(not math.isnan(t[2].p) for t in tests)
    how = (f"paired t-test, p Holm-adjusted over this table's {family} tests; none where "
           f"fewer than {MIN_SEEDS} seeds" if family else
           f"no test: fewer than {MIN_SEEDS} seeds, or no spread")
    lines = ["vs the architecture alone, difference in accuracy points over matched seeds "
             f"({how}):"]
    for column in dict.fromkeys(t[0] for t in tests):
        cells = [f"{s} {diff(c, q, decimals)}"
                 for (col, s, c), q in zip(tests, adjusted, strict=True) if col == column]
        lines.append(f"{column}: " + "; ".join(cells))
    return lines


def diff(c, p_holm: float, decimals: int = 2) -> str:
    """A paired difference as printed: "+3.0 (p_Holm=0.105, n=3)"."""
    if c.n == 0:
        return "n/a"
    text = f"{c.d:+.{decimals}f}"
    if c.flat:
        return f"{text} (every seed differs by the same: no test, n={c.n})"
    if c.n < MIN_SEEDS:  # the header says there is no test, once
        return f"{text} (n={c.n})"
    return f"{text} (p_Holm={p_text(p_holm)}, n={c.n})"


def not_done(all_rows: pd.DataFrame) -> list[Section]:
    rest = all_rows[all_rows.state != TrialState.DONE]
    if rest.empty:
        return []
    counts = rest.groupby(["generation", "chain", "state"]).size()
    table = pd.DataFrame(
        [{"generation": g, "chain": c, "state": s, "trials": n} for (g, c, s), n in counts.items()]
    ).set_index("generation")
    return [Section(f"trials not in the tables ({len(rest)} of {len(all_rows)})", table)]


def convergence(df: pd.DataFrame) -> list[Section]:
    """Per student, noise rate and setting: how many runs were still rising over their last
    fifth of epochs, how many did not learn at all, and the student's agreement with its
    teacher on the test set."""
    if df.test_acc_curve.isna().all():
        return []
    _, decimals = resolution(df)
    rows = []  # the per-run flags: load.with_flags
    for (student, noise, s), part in df.groupby(["student", "noise_rate", "setting"]):
        rows.append({"student": student, "noise": f"{noise:g}", "setting": s,
                     "still rising": f"{int(part.rising.sum())} of {len(part)}",
                     "did not learn": f"{int(part.stuck.sum())} of {len(part)}",
                     "rise over last fifth, points": cell(part.rise, decimals, scale=1),
                     "agreement with teacher %": cell(part.test_agreement, decimals)
                     if (part.generation > 0).all() else "-"})
    table = pd.DataFrame(rows)  # groupby sorted by student and noise; settings in their order
    table = table.assign(order=table.setting.map(setting_order)).sort_values(
        ["student", "noise", "order"], kind="stable").drop(columns="order").set_index("student")
    stuck = df[df.stuck]
    notes = [f"still rising: a least-squares line through the last fifth of the epochs' test "
             f"accuracy climbs by more than {RISING_IMAGES} test images with a slope positive "
             f"beyond chance (p < 0.05); such a run is not at its converged value, and a setting "
             "that rises more may be under-trained rather than worse",
             "did not learn: test accuracy below halfway from chance to the mean of the same "
             "architecture trained alone (same noise); such a run widens its cell's interval"]
    notes += [f"did not learn: {r.student} {r.setting} noise={r.noise_rate:g} seed {r.seed} "
              f"({r.test_acc * 100:.{decimals}f}%)" for r in stuck.itertuples()]
    return [Section(
        f"convergence: {int(df.rising.sum())} runs still rising at the end, {len(stuck)} did "
        f"not learn (of {len(df)})", table, notes)]


def reproducibility(df: pd.DataFrame) -> list[Section]:
    """The same trials (content keys) trained on different clusters, compared per setting:
    accuracy on each cluster (mean over seeds), the mean and the worst difference over matched
    seeds, flagged "!" where the mean difference exceeds the spread over seeds (the larger of
    the clusters' standard deviations)."""
    own = df[df.trained_on.fillna(df.cluster) == df.cluster]
    acc = own.pivot_table(index="key", columns="cluster", values="test_acc", aggfunc="first")
    acc = acc.dropna()
    if acc.shape[1] < 2 or acc.empty:
        return []
    first, *others = list(acc.columns)
    info = own.drop_duplicates("key").set_index("key").loc[acc.index]
    out = []
    for other in others:
        rows = []
        for (student, s, noise), keys in info.groupby(
            ["student", "setting", "noise_rate"]
        ).groups.items():
            a, b = acc.loc[keys, first] * 100, acc.loc[keys, other] * 100
            d = b - a
            spread = max(a.std(ddof=1), b.std(ddof=1)) if len(keys) > 1 else math.nan
            flag = "!" if not math.isnan(spread) and abs(d.mean()) > spread else ""
            rows.append({"student": student, "setting": s, "noise": f"{noise:g}",
                         "seeds": len(keys), first: f"{a.mean():.2f}", other: f"{b.mean():.2f}",
                         "mean diff": f"{d.mean():+.2f}{flag}",
                         "worst diff": f"{d.abs().max():.2f}"})
        d = (acc[other] - acc[first]) * 100
        out.append(Section(
            f"reproducibility: {len(acc)} trials trained on more than one cluster, test "
            f"accuracy % (mean over seeds), difference vs {first}; ! = beyond the seed spread",
            pd.DataFrame(rows).set_index("student"),
            [f"whole sweep, {other} - {first}: mean {d.mean():+.2f}, worst "
             f"{d.abs().max():.2f} over {len(d)} trials"]))
    return out
