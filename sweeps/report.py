"""`kdsweep report`: the paper-style comparison of one or more sweeps' results.

Tables, one per chain and noise rate: test accuracy by setting and generation (teacher,
generation 1, 2, ...) with each generation's architecture trained alone, as the mean and 95%
t-interval over seeds (below three seeds: each seed's value, no interval), printed to the
resolution of the test set (one image's worth of points); paired t-tests over matched seeds of
each setting against the architecture alone, Holm-adjusted (none below three seeds); the
trials not done; the correlation of
logit distance and accuracy; the same trials across clusters. Figures (seaborn, bootstrapped 95%
intervals over seeds): accuracy vs generation, vs tau (MSE as a reference line), vs noise per
architecture; logit distance vs accuracy per noise rate; the distributions of logit distance
and the penultimate projections (from the trials' analysis.json). A self-contained
report.html holds it all. Several inputs (e.g. two clusters' results) are shown side by side.
"""

from __future__ import annotations

import base64
import math
import sys
from html import escape
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on cluster heads or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from scipy import stats  # noqa: E402

from kd_core.analysis import SCALARS  # noqa: E402
from kd_core.names import DATASET_FACTS  # noqa: E402

from .record import FINAL_METRICS  # noqa: E402
from .results import read_results  # noqa: E402
from .spec import load_spec  # noqa: E402
from .storage import Storage  # noqa: E402
from .store import TrialStore  # noqa: E402
from .tracking import Tracker  # noqa: E402


def setting(row) -> str:
    if row.generation == 0:
        return "alone (ce)"
    if row.loss == "mse":
        return "mse"
    label = f"kl tau={'inf' if math.isinf(row.tau) else f'{row.tau:g}'}"
    return label if row.alpha in (1.0,) or math.isnan(row.alpha) else f"{label} a={row.alpha:g}"


def _setting_order(s: str) -> tuple:
    if s.startswith("kl tau="):
        t = s.split("=")[1].split()[0]
        return (1, math.inf if t == "inf" else float(t), s)
    return (2 if s == "mse" else 0, 0.0, s)


def from_mlflow(tracking_uri: str, experiment: str) -> pd.DataFrame:
    """The trial rows of an MLflow experiment (every cluster's runs), in the Parquet's columns,
    for a researcher who has the MLflow server but not the clusters' storage."""
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"--experiment {experiment!r}: no such experiment at {tracking_uri}")
    rows, token = [], None
    while True:
        page = client.search_runs(
            [exp.experiment_id],
            "tags.`kdsweep.role` = 'trial'",
            max_results=1000,
            page_token=token,
        )
        for r in page:
            p, t, m = r.data.params, r.data.tags, r.data.metrics
            done = r.info.status == "FINISHED" and "test_acc" in m
            row = {
                "sweep": experiment,
                "cluster": t.get("kdsweep.cluster"),
                "dataset": p.get("dataset"),
                "key": t.get("kdsweep.key"),
                "generation": int(t.get("kdsweep.generation", p.get("generation", 0))),
                "chain": t.get("kdsweep.chain"),
                "model": p.get("model"),
                "teacher_key": t.get("kdsweep.teacher_key"),
                "loss": p.get("loss"),
                "tau": _number(p.get("tau")),
                "alpha": _number(p.get("alpha")),
                "noise_kind": p.get("noise_kind"),
                "noise_rate": _number(p.get("noise_rate")),
                "seed": int(p.get("seed", 0)),
                "status": "done" if done else "missing",
                "trained_on": t.get("kdsweep.trained_by", t.get("kdsweep.cluster")),
                "mlflow_run_id": r.info.run_id,
                "source": f"{tracking_uri}#{experiment}",
            }
            # a metric's latest value is its last epoch's; the analyses are logged by name
            row.update({k: m.get(k) for k in (*FINAL_METRICS, *SCALARS)})
            rows.append(row)
        token = page.token
        if not token:
            return pd.DataFrame(rows)


def _number(v: str | None) -> float:
    try:
        return float(v)  # "inf" included
    except (TypeError, ValueError):
        return math.nan  # "None": not applicable


def load(
    inputs: list[str], tracking_uri: str | None = None, experiment: str | None = None
) -> tuple[pd.DataFrame, list]:
    """Inputs are spec files (their stored results are read) or Parquet paths/URIs; and/or
    an MLflow experiment."""
    uris, specs = [], []
    for item in dict.fromkeys(inputs):  # the same input given twice counts once
        if item.endswith((".yaml", ".yml")):
            spec = load_spec(item)
            specs.append(spec)
            uris.append(Storage(spec.storage).uri_of(TrialStore.results_file(spec)))
        else:
            uris.append(item)
    frames = [read_results(uris)] if uris else []
    if experiment:
        frames.append(from_mlflow(tracking_uri or "sqlite:///mlflow.db", experiment))
    df = pd.concat(frames, ignore_index=True)
    if "trained_on" not in df:  # results written before the column existed
        df["trained_on"] = df["cluster"]
    df = _once(df)
    df["setting"] = [setting(r) for r in df.itertuples()]
    df["origin"] = df["cluster"] + "/" + df["sweep"]
    left_out = df[df["status"] != "done"].status.value_counts()
    if not left_out.empty:  # counted (and listed in the report), never silently dropped
        counts = ", ".join(f"{n} {s}" for s, n in left_out.items())
        print(f"not in the tables: {counts} (of {len(df)} trials)", file=sys.stderr)
    return df, specs


def _once(df: pd.DataFrame) -> pd.DataFrame:
    """Each trial of each cluster's sweep once: inputs that overlap (the same results file by
    two names, or a Parquet file and the MLflow experiment it was logged to) are counted once,
    with a warning. The same trial on two clusters stays twice (the reproducibility table)."""
    dup = df.duplicated(["cluster", "sweep", "key"])
    if dup.any():
        sources = ", ".join(sorted(set(df[dup].source)))
        print(f"warning: {int(dup.sum())} trial rows given more than once (in {sources}) are "
              "counted once", file=sys.stderr)
    return df[~dup].reset_index(drop=True)


def distance_column(df: pd.DataFrame) -> tuple[str, str]:
    """The paper's logit-distance measure when the results have it (the median over the
    unaugmented training set, final models in eval mode), else the per-epoch running mean."""
    if "train_logit_distance_median" in df and df.train_logit_distance_median.notna().any():
        return "train_logit_distance_median", "median ||z_s - z_t|| (train set, final models)"
    return "logit_distance", "mean ||z_s - z_t|| (last epoch's training views)"


# ---- statistics over seeds -------------------------------------------------------------------
# No interval and no p-value from fewer seeds: a t-interval on one degree of freedom runs past
# 100%, and two seeds give no test worth the name. Below it the report shows each seed's value.
MIN_SEEDS = 3


def resolution(df: pd.DataFrame) -> tuple[float | None, int]:
    """What one test image is worth in accuracy points, and the decimals that supports (0.22
    points: one decimal); (None, 2) when the test set's size is not known."""
    if "dataset" not in df:
        return None, 2
    sizes = {DATASET_FACTS.get(d, {}).get("test") for d in df.dataset.unique()}
    if len(sizes) != 1 or None in sizes:
        return None, 2
    step = 100 / sizes.pop()
    return step, max(0, math.ceil(-math.log10(step) - 1e-9))


def t_interval(values) -> tuple[float, float, int]:
    """Mean, half-width of the 95% t-interval, and n, over seeds (half-width nan below
    MIN_SEEDS)."""
    v = np.asarray(pd.Series(values).dropna(), dtype=float)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    if n < MIN_SEEDS:
        return float(v.mean()), math.nan, n
    half = stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n)
    return float(v.mean()), float(half), n


def cell(values, decimals: int = 2) -> str:
    """Accuracy % as "mean ± half-width (n)" of its 95% t-interval over seeds; below MIN_SEEDS
    each seed's value (so their range), no interval."""
    v = pd.Series(values).dropna() * 100
    mean, half, n = t_interval(v)
    if n == 0:
        return "-"
    if n < MIN_SEEDS:
        return ", ".join(f"{x:.{decimals}f}" for x in sorted(v)) + f" (n={n})"
    return f"{mean:.{decimals}f} ± {half:.{decimals}f} (n={n})"


def paired(a: pd.Series, b: pd.Series) -> tuple[float, float, int]:
    """Mean of a - b over matched seeds (indexes), the paired t-test's two-sided p, and n. The
    p is nan where there is no test: below MIN_SEEDS, or when every seed's difference is the
    same (zero variance: the t statistic is undefined, never p = 0)."""
    both = pd.concat([a, b], axis=1, keys=["a", "b"]).dropna()
    n = len(both)
    if n == 0:
        return math.nan, math.nan, 0
    d = both.a - both.b
    if n < MIN_SEEDS or d.std(ddof=1) == 0:
        return float(d.mean()), math.nan, n
    return float(d.mean()), float(stats.ttest_rel(both.a, both.b).pvalue), n


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (nan: no test, left out of the
    family), in the order given."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    out, running = [math.nan] * len(pvalues), 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        out[i] = running
    return out


# ---- the chains a report is organised by -----------------------------------------------------
def full_chains(df: pd.DataFrame) -> list[str]:
    """The spec's chains as the results show them: students' lineages that no deeper student
    continues (a chain's shorter prefixes are its earlier generations)."""
    lineages = sorted(set(df[df.generation > 0].chain))
    return [c for c in lineages if not any(o.startswith(c + ">") for o in lineages)]


def chain_frame(df: pd.DataFrame, chain: str) -> pd.DataFrame:
    """The trials of one chain A>B>C, one row each, with a `column` per generation: the teacher
    (and every architecture trained alone) at its generation's column, the students of each
    generation under their setting; a generation-g student's lineage is chain[:g+1]."""
    models = chain.split(">")
    parts = []
    for g, model in enumerate(models):
        alone = df[(df.generation == 0) & (df.model == model)].assign(row="alone (ce)")
        parts.append(alone.assign(g=g))
        if g:
            lineage = ">".join(models[: g + 1])
            mine = df[(df.generation == g) & (df.chain == lineage)]
            parts.append(mine.assign(row=mine.setting, g=g))
    out = pd.concat(parts, ignore_index=True)
    out["column"] = [f"g{g} {models[g]}" for g in out.g]
    return out


def _setting_rows(index) -> list[str]:
    return sorted(index, key=_setting_order)


def tables(df: pd.DataFrame, all_rows: pd.DataFrame) -> str:
    """Per chain and noise rate: accuracy by setting (rows) and generation (columns), with the
    architecture of each generation trained alone as a row; then paired comparisons over
    matched seeds; then trials not done; then logit distance vs accuracy."""
    out = []
    several = df.origin.nunique() > 1
    step, decimals = resolution(df)
    grain = "" if step is None else f"; one test image = {step:.2f} points"
    for chain in full_chains(df):
        frame = chain_frame(df, chain)
        for keys, part in frame.groupby(["origin", "noise_rate"] if several else ["noise_rate"]):
            keys = keys if isinstance(keys, tuple) else (keys,)
            where = f"noise={keys[-1]:g}" + (f", {keys[0]}" if several else "")
            table = part.pivot_table(
                index="row", columns="column", values="test_acc",
                aggfunc=lambda v: cell(v, decimals),
            )
            table = table.reindex(_setting_rows(table.index))
            table = table[sorted(table.columns, key=lambda c: int(c.split()[0][1:]))]
            table.columns.name, table.index.name = None, "setting"
            out.append(
                f"== {chain} ({where}): test accuracy %, mean ± 95% t-interval over seeds "
                f"(n seeds; below {MIN_SEEDS} seeds each seed's value){grain}\n"
                f"{table.fillna('-').to_string()}\n{comparisons(part, decimals)}"
            )
    not_done = all_rows[all_rows.status != "done"]
    if not not_done.empty:
        counts = not_done.groupby(["generation", "chain", "status"]).size()
        lines = [f"  generation {g} {c}: {n} {s}" for (g, c, s), n in counts.items()]
        out.append(f"== trials not in the tables ({len(not_done)} of {len(all_rows)})\n"
                   + "\n".join(lines))
    out.append(correlations(df, several))
    return "\n\n".join(o for o in out if o)


def comparisons(part: pd.DataFrame, decimals: int = 2) -> str:
    """Per generation >= 1: each setting against the architecture alone, as the mean difference
    over matched seeds with the paired t-test's p, Holm-adjusted over the table's tests. No
    setting is tested against "the best": picking the best on the test set and then testing
    it would test what the pick already chose."""
    tests = []  # (column, setting, d, p, n, zero variance)
    for column, gen in part[part.g > 0].groupby("column"):
        acc = gen.pivot_table(index="seed", columns="row", values="test_acc") * 100
        if "alone (ce)" not in acc:
            continue
        for s in _setting_rows(c for c in acc.columns if c != "alone (ce)"):
            d, p, n = paired(acc[s], acc["alone (ce)"])
            # paired() gives no p at MIN_SEEDS or more only when every difference is the same
            tests.append((column, s, d, p, n, n >= MIN_SEEDS and math.isnan(p)))
    if not tests:
        return ""
    adjusted = holm([t[3] for t in tests])
    family = sum(not math.isnan(t[3]) for t in tests)
    how = (f"paired t-test, p Holm-adjusted over this table's {family} tests; none where "
           f"fewer than {MIN_SEEDS} seeds" if family else
           f"no test: fewer than {MIN_SEEDS} seeds, or no spread")
    lines = [f"   vs the architecture alone, difference in accuracy points over matched seeds "
             f"({how}):"]
    for column in dict.fromkeys(t[0] for t in tests):
        cells = [f"{s} {_diff(d, q, n, flat, decimals)}"
                 for (c, s, d, _, n, flat), q in zip(tests, adjusted, strict=True) if c == column]
        lines.append(f"   {column}: " + "; ".join(cells))
    return "\n".join(lines)


def _diff(d: float, p: float, n: int, flat: bool = False, decimals: int = 2) -> str:
    if n == 0:
        return "n/a"
    text = f"{d:+.{decimals}f}"
    if flat:
        return f"{text} (every seed differs by the same: no test, n={n})"
    if n < MIN_SEEDS:  # the table's header says there is no test, once
        return f"{text} (n={n})"
    return f"{text} (p_Holm={p:.3f}, n={n})"


def correlations(df: pd.DataFrame, several: bool) -> str:
    students = df[df.generation > 0]
    if len(students) < 3:
        return ""
    col, what = distance_column(students)
    lines = [f"== logit distance ({what}) vs test accuracy, Pearson r"]
    for keys, part in students.groupby(["origin", "noise_rate"] if several else ["noise_rate"]):
        keys = keys if isinstance(keys, tuple) else (keys,)
        if len(part) > 2 and part[col].std() > 0:
            r = np.corrcoef(part[col], part.test_acc)[0, 1]
            where = " ".join([f"noise={keys[-1]:g}", *map(str, keys[:-1])])
            lines.append(f"  {where}: r = {r:+.3f} over {len(part)} students")
    return "\n".join(lines)


# ---- plots -----------------------------------------------------------------------------------
def _tau_position(taus: pd.Series) -> tuple[dict, list]:
    """Equal spacing for the grid's taus (inf last): a log axis cannot show inf."""
    finite = sorted(t for t in taus.dropna().unique() if not math.isinf(t))
    pos = {t: i for i, t in enumerate(finite)}
    labels = [f"{t:g}" for t in finite]
    if any(math.isinf(t) for t in taus.dropna()):
        pos[math.inf] = len(finite)
        labels.append("inf")
    return pos, labels


def seeds_per_point(df: pd.DataFrame) -> int:
    """The fewest seeds behind any plotted mean (a setting of a chain, generation and noise)."""
    groups = df.groupby(["chain", "generation", "setting", "noise_rate"], dropna=False)
    return int(groups.seed.nunique().min()) if len(df) else 0


def plots(df: pd.DataFrame, out_dir: Path, analyses: dict[str, dict]) -> list[Path]:
    """PNG figures (seaborn); lines are means over seeds, with a bootstrap 95% band only where
    every point has MIN_SEEDS seeds, each figure saying which; ``analyses``: key ->
    analysis.json contents where the trials' storage is at hand (distributions and
    projections)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n = seeds_per_point(df)
    band = ("ci", 95) if n >= MIN_SEEDS else None
    note = (f"lines: means over seeds (at least {n} per point); " +
            ("bands: bootstrap 95% CI over seeds" if band else
             f"no bands: fewer than {MIN_SEEDS} seeds per point"))
    sns.set_theme(style="whitegrid", font_scale=0.8)
    df = df.assign(accuracy=df.test_acc * 100, noise=df.noise_rate.map(lambda r: f"{r:g}"))
    paths = []

    def save(fig, name, banded=False):
        if banded:
            fig.text(0.01, -0.03, note, fontsize=7, ha="left", va="top")  # below the ticks
        fig.savefig(out_dir / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(out_dir / name)

    chains = full_chains(df)
    noises = sorted(df.noise.unique(), key=float)
    students = df[df.generation > 0]
    if chains:  # generations 0..G as lines, one row of panels per chain
        fig, axes = plt.subplots(len(chains), len(noises), squeeze=False,
                                 figsize=(4.5 * len(noises), 3.4 * len(chains)))
        for row, chain in zip(axes, chains, strict=True):
            frame = chain_frame(df, chain)
            models = chain.split(">")
            teacher = frame[(frame.g == 0)]
            lines = []
            for s in _setting_rows(set(frame.row) - {"alone (ce)"}):
                lines.append(pd.concat([teacher.assign(row=s), frame[frame.row == s]]))
            alone = frame[frame.row == "alone (ce)"]
            for ax, noise in zip(row, noises, strict=True):
                data = pd.concat(lines + [alone])
                data = data[data.noise == noise]
                if data.empty:
                    ax.set_visible(False)
                    continue
                sns.lineplot(data=data, x="g", y="accuracy", hue="row", style="row",
                             markers=True, dashes=False, errorbar=band, ax=ax)
                ax.set_xticks(range(len(models)), [f"g{g}\n{m}" for g, m in enumerate(models)])
                ax.set(xlabel="", ylabel="test accuracy %", title=f"{chain}, noise {noise}")
                ax.legend(fontsize=6, title=None)
        save(fig, "accuracy_vs_generation.png", banded=True)

    kl = students[students.loss == "kl"]
    if not kl.empty:  # KL students over tau; MSE as a reference line of the same colour
        pos, labels = _tau_position(kl.tau)
        kl = kl.assign(x=kl.tau.map(pos), student=[f"g{g} {c}" for g, c in
                                                   zip(kl.generation, kl.chain, strict=True)])
        fig, axes = plt.subplots(1, len(noises), squeeze=False, figsize=(4.5 * len(noises), 3.4))
        for ax, noise in zip(axes[0], noises, strict=True):
            part = kl[kl.noise == noise]
            if part.empty:
                ax.set_visible(False)
                continue
            sns.lineplot(data=part, x="x", y="accuracy", hue="student", marker="o",
                         errorbar=band, ax=ax)
            handles, names = ax.get_legend_handles_labels()
            colors = {n: h.get_color() for h, n in zip(handles, names, strict=True)}
            mse = students[(students.loss == "mse") & (students.noise == noise)]
            for (g, c), m in mse.groupby(["generation", "chain"]):
                ax.axhline(m.accuracy.mean(), ls="--", lw=1, color=colors.get(f"g{g} {c}"),
                           label=f"g{g} {c} mse")
            ax.set_xticks(range(len(labels)), labels)
            ax.set(xlabel="tau (kl)", ylabel="test accuracy %", title=f"noise {noise}")
            ax.legend(fontsize=6)
        save(fig, "accuracy_vs_tau.png", banded=True)

    if df.noise_rate.nunique() > 1:  # one panel per architecture
        data = df.assign(what=[s if g else "alone (ce)" for s, g in
                               zip(df.setting, df.generation, strict=True)])
        grid = sns.relplot(data=data, x="noise_rate", y="accuracy", hue="what", col="model",
                           kind="line", marker="o", errorbar=band, height=3.2,
                           facet_kws={"sharey": False})
        grid.set_axis_labels("label noise rate", "test accuracy %")
        save(grid.figure, "accuracy_vs_noise.png", banded=True)

    if not students.empty:  # logit distance vs accuracy, a panel per noise rate
        col, what = distance_column(students)
        grid = sns.relplot(data=students, x=col, y="accuracy", hue="setting", col="noise",
                           col_order=[n for n in noises if n in set(students.noise)],
                           kind="scatter", height=3.2)
        for ax in grid.axes.flat:
            if (students[col] > 0).all():
                ax.set_xscale("log")
        grid.set_axis_labels(what, "test accuracy %")
        save(grid.figure, "logit_distance_vs_accuracy.png")

    if analyses:
        analysis_plots(df, analyses, save)
    return paths


def _representatives(df: pd.DataFrame) -> pd.DataFrame:
    """One generation-1 student per setting of the first chain, at the lowest noise rate and
    seed: the runs whose distributions are drawn."""
    g1 = df[df.generation == 1]
    if g1.empty:
        return g1
    first = sorted(g1.chain)[0]
    g1 = g1[(g1.chain == first) & (g1.noise_rate == g1.noise_rate.min())]
    return g1[g1.seed == g1.seed.min()]


def analysis_plots(df: pd.DataFrame, analyses: dict[str, dict], save) -> None:
    reps = _representatives(df)
    reps = reps[reps.key.isin(analyses.keys())]
    if reps.empty:
        return
    fig, ax = plt.subplots(figsize=(5.5, 3.4))  # logit-distance distributions per setting
    for r in sorted(reps.itertuples(), key=lambda r: _setting_order(r.setting)):
        h = analyses[r.key]["train"].get("logit_distance")
        if h:
            ax.stairs(h["counts"], h["edges"], label=r.setting)
    ax.set(xlabel="||z_s - z_t||_2 per training image (final models)", ylabel="images",
           title=f"logit distance, {reps.chain.iloc[0]}, noise {reps.noise_rate.iloc[0]:g}")
    ax.legend(fontsize=6)
    save(fig, "logit_distance_distributions.png")

    # Penultimate features of three classes on their templates' plane: the teacher, the
    # smallest- and largest-tau KL students, the MSE student.
    kl = reps[reps.loss == "kl"].sort_values("tau")
    picks = [("teacher", reps.teacher_key.iloc[0])]
    if not kl.empty:
        picks.append((kl.setting.iloc[0], kl.key.iloc[0]))
        if len(kl) > 1:
            picks.append((kl.setting.iloc[-1], kl.key.iloc[-1]))
    picks += [("mse", k) for k in reps[reps.loss == "mse"].key[:1]]
    picks = [(name, k) for name, k in picks if k in analyses]
    fig, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3.2), squeeze=False)
    for ax, (name, key) in zip(axes[0], picks, strict=True):
        proj = analyses[key]["train"]["projection"]
        for c, pts in proj["points"].items():
            pts = np.asarray(pts).reshape(-1, 2)
            ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.5, label=f"class {c}")
        t = np.asarray(proj["templates"])
        ax.plot(*np.vstack([t, t[:1]]).T, "k--", lw=0.8)
        ax.set_title(name)
        ax.set_aspect("equal", "datalim")
    axes[0][0].legend(fontsize=6, markerscale=3)
    save(fig, "penultimate_projection.png")


def html(text: str, paths: list[Path], title: str) -> str:
    """A self-contained HTML report: the tables, then every figure inline."""
    figures = "\n".join(
        f'<h3>{p.stem.replace("_", " ")}</h3><img alt="{p.stem}" '
        f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        for p in paths
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}pre{font-size:12px}"
        "img{max-width:100%}</style></head><body>"
        f"<h1>{escape(title)}</h1><pre>{escape(text)}</pre>{figures}</body></html>"
    )


def reproducibility(df: pd.DataFrame) -> str | None:
    """The same trials (content keys) trained on different clusters, compared per setting:
    accuracy on each cluster (mean over seeds), the mean and the worst difference over matched
    seeds, flagged "!" where the mean difference exceeds the spread over seeds (the larger of
    the clusters' standard deviations)."""
    own = df[df.trained_on.fillna(df.cluster) == df.cluster]
    acc = own.pivot_table(index="key", columns="cluster", values="test_acc", aggfunc="first")
    acc = acc.dropna()
    if acc.shape[1] < 2 or acc.empty:
        return None
    first, *others = list(acc.columns)
    info = own.drop_duplicates("key").set_index("key").loc[acc.index]
    info = info.assign(setting=[setting(r) for r in info.itertuples()])
    lines = [
        f"== reproducibility: {len(acc)} trials trained on more than one cluster, test "
        f"accuracy % (mean over seeds), difference vs {first}; ! = beyond the seed spread"
    ]
    for other in others:
        rows = []
        for (chain, gen, s, noise), keys in info.groupby(
            ["chain", "generation", "setting", "noise_rate"]
        ).groups.items():
            a, b = acc.loc[keys, first] * 100, acc.loc[keys, other] * 100
            diff = b - a
            spread = max(a.std(ddof=1), b.std(ddof=1)) if len(keys) > 1 else math.nan
            flag = "!" if not math.isnan(spread) and abs(diff.mean()) > spread else ""
            rows.append(
                {
                    "chain": chain,
                    "gen": gen,
                    "setting": s,
                    "noise": noise,
                    "seeds": len(keys),
                    first: f"{a.mean():.2f}",
                    other: f"{b.mean():.2f}",
                    "mean diff": f"{diff.mean():+.2f}{flag}",
                    "worst diff": f"{diff.abs().max():.2f}",
                }
            )
        table = pd.DataFrame(rows).to_string(index=False)
        d = (acc[other] - acc[first]) * 100
        lines.append(
            f"{table}\n  whole sweep, {other} - {first}: mean {d.mean():+.2f}, worst "
            f"{d.abs().max():.2f} over {len(d)} trials"
        )
    return "\n".join(lines)


def load_analyses(df: pd.DataFrame, specs: list) -> dict[str, dict]:
    """analysis.json of the drawn trials (and their teachers), where their storage is known."""
    reps = _representatives(df[df.status == "done"])
    keys = set(reps.key) | set(reps.teacher_key.dropna())
    out = {}
    for spec in specs:
        store = TrialStore(Storage(spec.storage))
        for key in keys - out.keys():
            if (a := store.analysis(key)) is not None:
                out[key] = a
    return out


def report(
    inputs: list[str],
    out_dir: str | Path,
    tracking_uri: str | None = None,
    experiment: str | None = None,
) -> tuple[str, list[Path]]:
    """Tables (text), PNG figures and report.html in ``out_dir``; all of them are logged to
    each input spec's parent run under report/."""
    all_rows, specs = load(inputs, tracking_uri, experiment)
    df = all_rows[all_rows.status == "done"]
    if df.empty:
        raise ValueError(f"no finished trials in {', '.join(inputs) or experiment}")
    text = tables(df, all_rows)
    if repro := reproducibility(df):
        text += "\n\n" + repro
    out_dir = Path(out_dir)
    paths = plots(df, out_dir, load_analyses(all_rows, specs))
    title = "kdsweep report: " + ", ".join(sorted(set(df.origin)))
    page = out_dir / "report.html"
    page.write_text(html(text, paths, title))
    for spec in specs:
        tracker = Tracker(spec, Storage(spec.storage))
        for p in [*paths, page]:
            tracker.log_parent_artifact(p, "report")
        tracker.client.log_text(tracker.parent_id, text, "report/report.txt")
    return text, [*paths, page]
