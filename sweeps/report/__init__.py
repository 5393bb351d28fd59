"""`kdsweep report`: one or more sweeps' results as a paper-style report a reviewer can read.

Phases: load the trial rows (load.py) -> the paper's claims with verdicts (claims.py) -> the
accuracy tables, convergence, trials not done, the same trials across clusters (tables.py) ->
figures with captions (figures.py) -> report.html (page.py), each table also as CSV and LaTeX
(export.py). It only reads (results, MLflow,
analysis files) and writes into its output folder: logging the report to each sweep's MLflow
run is the caller's explicit next step (tracking.sweep_run.publish_report; `kdsweep report`
takes it). The statistics and their rules (no inference below three seeds, Holm,
values to the test set's resolution) are in stats.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from kd_core.names import CLASS_NAMES, DATASET_FACTS

from ..domain.plan import objective, setting_order
from ..domain.record import TrialState
from ..store.ledger import Ledger
from ..store.storage import Storage, concurrently
from ..tracking.sweep_run import git_commit, ui_command
from .analysis_figures import analysis_figures, distribution_runs, representatives
from .claims import claims
from .export import TABLES, export
from .fidelity import (
    calibration_figure,
    calibration_table,
    paired_tests,
    per_class,
    prediction_runs,
    reliability_figure,
)
from .figures import Figures
from .forest import forest
from .load import load
from .page import RunLinks, page, summary
from .pooled import POWER
from .sequential import sequential_sections
from .stats import MIN_SEEDS, SIMILAR_MARGIN, cell, holm, paired, resolution, t_interval
from .tables import accuracy, convergence, not_done, reproducibility

READERS = 16  # analysis files read at once (object storage: latency, not bandwidth, bounds it)
__all__ = ["MIN_SEEDS", "cell", "holm", "paired", "report", "resolution", "t_interval"]


def report(
    inputs: list[str],
    out_dir: str | Path,
    tracking_uri: str | None = None,
    experiment: str | None = None,
) -> tuple[str, list[Path]]:
    """Tables (returned as text), PNG figures, report.html and the tables as CSV and LaTeX
    (tables/) in ``out_dir``, and nothing written anywhere else; the files written."""
    all_rows, specs = load(inputs, tracking_uri, experiment)
    df = all_rows[all_rows.state == TrialState.DONE]
    if df.empty:
        raise ValueError(f"no finished trials in {', '.join(inputs) or experiment}")
    verdicts = claims(df, margin(specs))
    if sequential := [s for s in specs if s.grid.add_seeds is not None]:
        verdicts = sequential_sections(df, sequential[0],
                                       lambda d: claims(d, margin(specs)))
    step, decimals = resolution(df)
    preds = load_predictions(df, specs)
    sections = [*verdicts, *accuracy(df), *calibration_table(df, step, decimals),
                *per_class(df, preds, decimals, class_names(df)),
                *paired_tests(df, preds, decimals), *convergence(df), *not_done(all_rows),
                *reproducibility(df)]
    text = "\n\n".join(s.text() for s in [summary(verdicts), *sections] if s.text())

    out_dir = Path(out_dir)
    figures = (draw(df, out_dir, load_analyses(all_rows, specs), preds)
               + forest(verdicts, out_dir))
    title = "kdsweep report: " + ", ".join(sorted(set(df.origin)))
    shown = [summary(verdicts), *sections]
    tables = export(shown, out_dir)
    html_file = out_dir / "report.html"
    html_file.write_text(page(title, header(all_rows, specs, len(tables) // 2), shown, figures,
                              links(specs, tracking_uri, experiment)))
    return text, [p for p, _ in figures] + [html_file, *tables]


def margin(specs: list) -> float:
    """C2's non-inferiority margin: the specs' report.similar_margin (the strictest, where
    several differ), else the default."""
    return min((s.report.similar_margin for s in specs), default=SIMILAR_MARGIN)


def draw(df: pd.DataFrame, out_dir: Path, analyses: dict[str, dict],
         preds: dict[str, dict] | None = None) -> list[tuple[Path, str]]:
    figs = Figures(df, out_dir)
    figs.accuracy_vs_generation()
    figs.accuracy_vs_tau()
    calibration_figure(figs)
    if preds:
        reliability_figure(figs, preds)
    figs.alpha_tau_maps()
    figs.accuracy_vs_noise()
    figs.learning_curves()
    figs.distance_vs_accuracy()
    if analyses:
        analysis_figures(figs, analyses)
    return figs.made


def load_analyses(df: pd.DataFrame, specs: list) -> dict[str, dict]:
    """analysis.json of the drawn trials (and the projected ones' teachers), where their
    storage is known, read concurrently."""
    done = df[df.state == TrialState.DONE]
    reps = representatives(done)
    keys = set(reps.key) | set(reps.teacher_key.dropna()) | set(distribution_runs(done).key)
    out = {}
    for spec in specs:
        ledger = Ledger(Storage(spec.storage), repair=False)
        wanted = sorted(keys - out.keys())
        for key, a in zip(wanted, concurrently(ledger.analysis, wanted, READERS), strict=True):
            if a is not None:
                out[key] = a
    return out


def load_predictions(done: pd.DataFrame, specs: list) -> dict[str, dict]:
    """predictions.npz of the runs the per-image views read (fidelity.prediction_runs), where
    their storage is known and they were stored (trials trained before have none)."""
    keys = set(prediction_runs(done).key)
    out = {}
    for spec in specs:
        ledger = Ledger(Storage(spec.storage), repair=False)
        wanted = sorted(keys - out.keys())
        for key, p in zip(wanted, concurrently(ledger.predictions, wanted, READERS),
                          strict=True):
            if p is not None:
                out[key] = p
    return out


def class_names(df: pd.DataFrame):
    """Label -> "3" or "3 (cat)", for the dataset's known class names."""
    names = CLASS_NAMES.get(df.dataset.iloc[0], ()) if "dataset" in df and len(df) else ()

    def name(label) -> str:
        i = int(label)
        return f"{i} ({names[i]})" if i < len(names) and names[i] != str(i) else str(i)

    return name


def header(rows: pd.DataFrame, specs: list, tables: int = 0) -> dict[str, str]:
    """What a reader needs to know before the numbers: what ran, on what, how long."""
    done = rows[rows.state == TrialState.DONE]
    data = []
    for name in sorted(set(rows.dataset.dropna())):
        facts = DATASET_FACTS.get(name, {})
        data.append(f"{name} ({facts.get('train', '?')} train / {facts.get('test', '?')} test "
                    "images)" if facts else name)
    step, _ = resolution(done)
    epochs = sorted(set(done.epochs.dropna().astype(int)))
    out = {
        "report's commit": git_commit(),
        "specs": ", ".join(f"{s.name} ({s.storage})" for s in specs) or "results files only",
        "sources": ", ".join(sorted({shown(s) for s in rows.source})),
        "dataset": ", ".join(data),
        "epochs": ", ".join(map(str, epochs)),
        "clusters": ", ".join(sorted(set(rows.cluster.dropna()))),
        "trials": f"{len(done)} done of {len(rows)}; seeds {sorted(set(done.seed))}",
        "settings": objectives(done),
        "statistics": f"each claim's verdict from its effects with the seed as the unit (each "
                      f"seed's effect the mean over the claim's rows; a t over seeds, its "
                      f"interval the same test's; detectable effects at {POWER:.0%} power of "
                      f"that test); 95% intervals over seeds (accuracy: the test set's binomial "
                      f"half-width added in quadrature), "
                      f"none below {MIN_SEEDS} seeds; row tests Holm-adjusted; C2's margin "
                      f"{margin(specs):g} accuracy points; rules: docs/claims.md"
                      + (f"; one test image = {step:.2f} points" if step else ""),
    }
    for spec in (s for s in specs if s.grid.add_seeds is not None):
        add = spec.grid.add_seeds
        out[f"adding seeds ({spec.name})"] = (
            f"a sequential study: seeds {', '.join(map(str, spec.grid.seeds))} first, then "
            f"{add.per_look} a look, up to {add.up_to}, to the claims still undecided; each "
            "claim's verdict is the group-sequential rule's, at the look that decided it "
            "(docs/claims.md, 'adding seeds')")
    if (selection := selected(done)) is not None:
        out["selection"] = selection
    for spec in specs:
        out[f"MLflow ({spec.name})"] = (spec.tracking_uri if spec.tracking_uri.startswith("http")
                                        else ui_command(spec.tracking_uri, here=False))
    if tables:
        out["tables"] = (f"{tables} tables as CSV and LaTeX (booktabs) in {TABLES}/ beside this "
                         "page, the cells as printed here")
    if specs:
        out["links"] = ("the accuracy tables' cells open the MLflow runs behind them (a local "
                        "store: start the UI with the command above first)")
    return out


def objectives(done: pd.DataFrame) -> str:
    """Each student setting's objective by its weights (plan.objective), so no reader guesses
    which term alpha weighs."""
    students = done[done.generation > 0].drop_duplicates("setting")
    parts = [f"{r.setting}: {objective(r.loss, r.tau, r.alpha)}"
             for r in sorted(students.itertuples(), key=lambda r: setting_order(r.setting))]
    return "; ".join(parts) + ("; alone (ce): CE on the labels" if len(parts) else "")


def shown(source: str) -> str:
    """A results file as the header names it: relative to where the report was made when it
    lies below it (a page read on another machine names no path of this one), else as is."""
    if "://" in source or not os.path.isabs(source):
        return source
    rel = os.path.relpath(source)
    return source if rel.startswith("..") else rel


def selected(done: pd.DataFrame) -> str | None:
    """What a search selected students on, per sweep; a test-set metric said loudly."""
    chosen = done.dropna(subset=["selected_on"])
    if chosen.empty:
        return None
    parts = []
    for (origin, metric), part in chosen.groupby(["origin", "selected_on"]):
        if metric.startswith("test_"):
            parts.append(f"{origin}: ON THE TEST SET ({metric}; search.allow_test_metric): its "
                         f"{len(part)} searched students' test accuracies are optimistic")
        else:
            parts.append(f"{origin}: {metric} ({len(part)} searched students), the test set "
                         "untouched")
    return "; ".join(parts)


def links(specs: list, tracking_uri: str | None, experiment: str | None) -> RunLinks:
    """Cell links into the MLflow UI of the first spec's (or the given) experiment."""
    uri, name = ((specs[0].tracking_uri, specs[0].name) if specs else (tracking_uri, experiment))
    if not uri or not name:
        return RunLinks(None, None)
    try:
        exp = MlflowClient(uri).get_experiment_by_name(name)
    except Exception:  # the report never fails for want of links
        return RunLinks(None, None)
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return RunLinks(base, exp.experiment_id if exp else None)

