"""`kdsweep report`: the paper-style comparison of one or more sweeps' results.

Tables: test accuracy (mean +- std over seeds) per loss and tau, per noise rate, per chain and
generation; the correlation between logit distance and accuracy. Plots (PNG): accuracy vs tau
with the MSE level, accuracy vs noise rate, accuracy vs generation, logit distance vs accuracy.
Several inputs (e.g. two clusters' results) are shown side by side.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on cluster heads or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from kd_core.analysis import SCALARS  # noqa: E402

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
    left_out = df[df["status"] != "done"].status.value_counts()
    if not left_out.empty:  # counted, never silently dropped
        counts = ", ".join(f"{n} {s}" for s, n in left_out.items())
        print(f"not in the tables: {counts} (of {len(df)} trials)", file=sys.stderr)
    df = df[df["status"] == "done"].copy()
    df["setting"] = [setting(r) for r in df.itertuples()]
    df["origin"] = df["cluster"] + "/" + df["sweep"]
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


def _fmt(values: pd.Series) -> str:
    v = values.dropna() * 100
    if v.empty:
        return "-"
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}"


def tables(df: pd.DataFrame) -> str:
    out = []
    several = df["origin"].nunique() > 1
    cols = ["origin", "noise_rate"] if several else ["noise_rate"]
    students = df[df.generation > 0]
    for (chain, gen), part in students.groupby(["chain", "generation"], sort=True):
        # The models trained alone that this chain is compared against: its student and teacher.
        models = chain.split(">")
        alone = df[(df.generation == 0) & df.model.isin([models[0], models[-1]])].copy()
        alone["setting"] = np.where(
            alone.model == models[0], f"teacher {models[0]}", f"alone {models[-1]}"
        )
        frame = pd.concat([part, alone[alone.noise_rate.isin(part.noise_rate)]])
        n_seeds = part.groupby(["setting"] + cols)["seed"].nunique().max()
        table = frame.pivot_table(index="setting", columns=cols, values="test_acc", aggfunc=_fmt)
        table = table.reindex(sorted(table.index, key=_setting_order))
        table.columns = [
            " ".join(
                f"noise={c}" if isinstance(c, float) else str(c)
                for c in (col if isinstance(col, tuple) else (col,))
            )
            for col in table.columns
        ]
        out.append(
            f"== {chain} (generation {gen}): test accuracy %, mean ± std over "
            f"{n_seeds} seed(s)\n{table.to_string()}"
        )
    if len(students) > 2:
        col, what = distance_column(students)
        lines = [f"== logit distance ({what}) vs test accuracy, Pearson r"]
        for keys, part in students.groupby(cols):
            keys = keys if isinstance(keys, tuple) else (keys,)
            if len(part) > 2 and part[col].std() > 0:
                r = np.corrcoef(part[col], part.test_acc)[0, 1]
                lines.append(
                    f"  {' '.join(map(str, keys))}: r = {r:+.3f} over {len(part)} students"
                )
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _tau_axis(taus: pd.Series) -> tuple[dict, list, list]:
    finite = sorted(t for t in taus.unique() if not math.isinf(t))
    pos = {t: i for i, t in enumerate(finite)}
    labels = [f"{t:g}" for t in finite]
    if any(math.isinf(t) for t in taus):
        pos[math.inf] = len(finite)
        labels.append("inf")
    return pos, list(range(len(labels))), labels


def plots(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    students = df[df.generation > 0]
    kl, mse = students[students.loss == "kl"], students[students.loss == "mse"]

    def save(fig, name):
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    if not kl.empty:
        pos, ticks, labels = _tau_axis(kl.tau)
        noises = sorted(students.noise_rate.unique())
        fig, axes = plt.subplots(1, len(noises), figsize=(5 * len(noises), 4), squeeze=False)
        for ax, noise in zip(axes[0], noises, strict=True):
            for (origin, chain), part in kl[kl.noise_rate == noise].groupby(["origin", "chain"]):
                g = part.groupby("tau").test_acc.agg(["mean", "std"]).reset_index()
                x = [pos[t] for t in g.tau]
                line = ax.errorbar(
                    x,
                    g["mean"] * 100,
                    yerr=g["std"].fillna(0) * 100,
                    marker="o",
                    capsize=3,
                    label=f"{chain} kl ({origin})",
                )
                m = mse[(mse.noise_rate == noise) & (mse.chain == chain) & (mse.origin == origin)]
                if not m.empty:
                    ax.axhline(
                        m.test_acc.mean() * 100,
                        ls="--",
                        color=line[0].get_color(),
                        label=f"{chain} mse",
                    )
            ax.set(
                xticks=ticks,
                xticklabels=labels,
                xlabel="tau",
                ylabel="test accuracy %",
                title=f"noise {noise:g}",
            )
            ax.legend(fontsize=7)
        save(fig, "accuracy_vs_tau.png")

    if students.noise_rate.nunique() > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        direct = df[df.generation <= 1]
        for (origin, s), part in direct.groupby(["origin", "setting"]):
            if s == "alone (ce)":
                part = part[part.model.isin(students.model)]
            g = part.groupby("noise_rate").test_acc.mean()
            ax.plot(g.index, g.values * 100, marker="o", label=f"{s} ({origin})")
        ax.set(
            xlabel="label noise rate",
            ylabel="test accuracy %",
            title="generation <= 1 students vs noise",
        )
        ax.legend(fontsize=7)
        save(fig, "accuracy_vs_noise.png")

    if students.generation.max() > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        deep = students[students.chain.str.count(">") >= 2]
        for (origin, s, noise), part in deep.groupby(["origin", "setting", "noise_rate"]):
            g = part.groupby("generation").test_acc.mean()
            ax.plot(g.index, g.values * 100, marker="o", label=f"{s} noise={noise:g} ({origin})")
        ax.set(
            xlabel="generation",
            ylabel="test accuracy %",
            xticks=sorted(deep.generation.unique()),
            title="sequential distillation",
        )
        ax.legend(fontsize=6)
        save(fig, "accuracy_vs_generation.png")

    if not students.empty:
        fig, ax = plt.subplots(figsize=(6, 4))
        col, what = distance_column(students)
        for s, part in students.groupby("setting"):
            ax.scatter(part[col], part.test_acc * 100, s=14, label=s)
        ax.set(
            xlabel=what,
            ylabel="test accuracy %",
            title="logit distance vs accuracy",
        )
        ax.legend(fontsize=7)
        save(fig, "logit_distance_vs_accuracy.png")
    return paths


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


def report(
    inputs: list[str],
    out_dir: str | Path,
    tracking_uri: str | None = None,
    experiment: str | None = None,
) -> tuple[str, list[Path]]:
    """Print-ready tables and PNG plots; plots are logged to each input spec's parent run."""
    df, specs = load(inputs, tracking_uri, experiment)
    if df.empty:
        raise ValueError(f"no finished trials in {', '.join(inputs) or experiment}")
    text = tables(df)
    if repro := reproducibility(df):
        text += "\n\n" + repro
    paths = plots(df, Path(out_dir))
    for spec in specs:
        tracker = Tracker(spec, Storage(spec.storage))
        for p in paths:
            tracker.log_parent_artifact(p, "report")
        tracker.client.log_text(tracker.parent_id, text, "report/report.txt")
    return text, paths
