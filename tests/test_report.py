"""`kdsweep report` on a small results table whose numbers are worked out by hand."""

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sweeps.report import paired, report, t_interval
from sweeps.results import SCHEMA

# chain A>B>C, one noise rate, three seeds; accuracies chosen for round statistics
ACC = {
    ("A", 0, "ce"): [0.80, 0.81, 0.82],  # the teacher, trained alone
    ("B", 0, "ce"): [0.68, 0.69, 0.70],  # B alone
    ("C", 0, "ce"): [0.60, 0.60, 0.60],  # C alone
    ("A>B", 1, "kl"): [0.70, 0.72, 0.74],  # B from A, kl tau=4: +2, +3, +4 over B alone
    ("A>B", 1, "mse"): [0.71, 0.71, 0.71],
    ("A>B>C", 2, "kl"): [0.64, 0.66, 0.65],
    ("A>B>C", 2, "mse"): [0.61, 0.62, 0.66],
}


def rows():
    out = []
    for (chain, gen, loss), accs in ACC.items():
        for seed, acc in enumerate(accs):
            out.append({
                "sweep": "s", "cluster": "c", "dataset": "digits",
                "key": f"{chain}-{loss}-{seed}", "generation": gen, "chain": chain,
                "model": chain.split(">")[-1],
                "teacher_key": None if gen == 0 else f"{chain.rsplit('>', 1)[0]}-"
                f"{'ce' if gen == 1 else loss}-{seed}",
                "loss": loss, "tau": 4.0 if loss == "kl" else None,
                "alpha": None if gen == 0 else 1.0, "noise_kind": "symmetric",
                "noise_rate": 0.0, "seed": seed, "status": "done", "test_acc": acc,
                "train_logit_distance_median": None if gen == 0 else 1 + acc,
            })
    out.append({**out[-1], "key": "A>B>C-mse-3", "seed": 3, "status": "failed",
                "test_acc": None})
    return out


def test_interval_and_paired_test_by_hand():
    mean, half, n = t_interval([70.0, 72.0, 74.0])
    # sd 2, t(0.975, df 2) = 4.302653: half-width 4.302653 * 2 / sqrt(3)
    assert (mean, n) == (72.0, 3) and half == pytest.approx(4.302653 * 2 / math.sqrt(3))
    d, p, n = paired(pa.array([70.0, 72.0, 74.0]).to_pandas(),
                     pa.array([68.0, 69.0, 70.0]).to_pandas())
    # differences 2, 3, 4: mean 3, sd 1, t = 3 * sqrt(3) = 5.196 on 2 df: p = 0.0351
    assert (d, n) == (3.0, 3) and p == pytest.approx(0.03510, abs=1e-4)


def test_report_tables_figures_and_html(tmp_path, capsys):
    path = tmp_path / "results.parquet"
    pq.write_table(pa.Table.from_pylist(rows(), schema=SCHEMA), path)
    copy = tmp_path / "copy.parquet"
    copy.write_bytes(path.read_bytes())
    text, paths = report([str(path), str(path), str(copy)], tmp_path / "rep")
    assert "counted once" in capsys.readouterr().err  # the copy overlaps: each trial once
    table = text.split("== A>B>C (noise=0)")[1].split("==")[0]
    _, header, _, *lines = table.splitlines()
    assert header.split() == ["g0", "A", "g1", "B", "g2", "C"]  # a column per generation
    by_row = {ln.split("  ")[0].strip(): ln for ln in lines}
    assert "72.00 ± 4.97 (n=3)" in by_row["kl tau=4"]  # g1 B from A, kl
    assert "81.00 ± 2.48 (n=3)" in by_row["alone (ce)"]  # the teacher, in g0
    assert "60.00 ± 0.00 (n=3)" in by_row["alone (ce)"]  # C alone, in g2
    assert "71.00 ± 0.00 (n=3)" in by_row["mse"]
    # g1: kl vs B alone: +3.00 (p = 0.035); the best setting is kl (72 > 71)
    g1 = next(ln for ln in table.splitlines() if ln.strip().startswith("g1 B:"))
    assert "kl tau=4 vs alone +3.00 (p=0.035, n=3)" in g1
    assert "mse vs alone +2.00" in g1 and "vs best (kl tau=4) -1.00" in g1
    # the failed trial is counted, not dropped
    assert "trials not in the tables (1 of 22)" in text
    assert "generation 2 A>B>C: 1 failed" in text
    assert "Pearson r" in text and "train set, final models" in text
    names = {p.name for p in paths}
    assert {"accuracy_vs_generation.png", "accuracy_vs_tau.png",
            "logit_distance_vs_accuracy.png", "report.html"} <= names
    page = (tmp_path / "rep" / "report.html").read_text()
    assert page.count("<img") == len(paths) - 1 and "72.00 ± 4.97 (n=3)" in page
