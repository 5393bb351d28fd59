"""`kdsweep report` on a small results table whose numbers are worked out by hand."""

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sweeps.report import cell, holm, paired, report, resolution, t_interval
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


def test_small_n_shows_seeds_not_inference():
    """Below three seeds: each seed's value, no interval, no p-value (issue 20)."""
    assert cell([0.7111]) == "71.11 (n=1)"
    assert cell([0.7222, 0.7111], decimals=1) == "71.1, 72.2 (n=2)"  # sorted: the range
    assert math.isnan(t_interval([70.0, 72.0])[1])
    d, p, n = paired(pa.array([70.0, 72.0]).to_pandas(), pa.array([68.0, 69.0]).to_pandas())
    assert (d, n) == (2.5, 2) and math.isnan(p)
    # three seeds that all differ by the same 0.44 points: zero variance, no test, never p = 0
    d, p, n = paired(pa.array([70.44, 72.44, 74.44]).to_pandas(),
                     pa.array([70.0, 72.0, 74.0]).to_pandas())
    assert d == pytest.approx(0.44) and n == 3 and math.isnan(p)


def test_holm_against_a_hand_computed_case():
    # m = 3: sorted 0.01, 0.03, 0.04 -> 3 x 0.01 = 0.03; 2 x 0.03 = 0.06; max(0.06, 1 x 0.04)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.4]) == pytest.approx([0.8, 0.8])  # 2 x 0.4 = 0.8; max(0.8, 0.5)
    out = holm([0.02, math.nan])  # no test: not in the family
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1])


def test_values_are_printed_to_the_test_sets_resolution():
    import pandas as pd

    step, decimals = resolution(pd.DataFrame({"dataset": ["digits"]}))
    assert step == pytest.approx(100 / 450) and decimals == 1  # 0.22 points: one decimal
    assert resolution(pd.DataFrame({"dataset": ["cifar100"]})) == (0.01, 2)
    assert resolution(pd.DataFrame({"dataset": ["synthetic"]})) == (None, 2)


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
    # digits: 450 test images, one = 0.22 points, so one decimal
    assert "one test image = 0.22 points" in text
    assert "72.0 ± 5.0 (n=3)" in by_row["kl tau=4"]  # g1 B from A, kl
    assert "81.0 ± 2.5 (n=3)" in by_row["alone (ce)"]  # the teacher, in g0
    assert "60.0 ± 0.0 (n=3)" in by_row["alone (ce)"]  # C alone, in g2
    assert "71.0 ± 0.0 (n=3)" in by_row["mse"]
    # Against the architecture alone, by hand: g1 kl +3 (differences 2, 3, 4: p 0.0351), mse
    # +2 (3, 2, 1: p 0.0742); g2 kl +5 (4, 6, 5: p 0.0131), mse +3 (1, 2, 6: p 0.188). Holm
    # over the 4: 4 x 0.0131 = 0.052, 3 x 0.0351 = 0.105, 2 x 0.0742 = 0.148, 0.188. No test
    # against "the best".
    assert "Holm-adjusted over this table's 4 tests" in table and "best" not in table
    g1 = next(ln for ln in table.splitlines() if ln.strip().startswith("g1 B:"))
    g2 = next(ln for ln in table.splitlines() if ln.strip().startswith("g2 C:"))
    assert "kl tau=4 +3.0 (p_Holm=0.105, n=3); mse +2.0 (p_Holm=0.148, n=3)" in g1
    assert "kl tau=4 +5.0 (p_Holm=0.052, n=3); mse +3.0 (p_Holm=0.188, n=3)" in g2
    # the failed trial is counted, not dropped
    assert "trials not in the tables (1 of 22)" in text
    assert "generation 2 A>B>C: 1 failed" in text
    assert "Pearson r" in text and "train set, final models" in text
    names = {p.name for p in paths}
    assert {"accuracy_vs_generation.png", "accuracy_vs_tau.png",
            "logit_distance_vs_accuracy.png", "report.html"} <= names
    page = (tmp_path / "rep" / "report.html").read_text()
    assert page.count("<img") == len(paths) - 1 and "72.0 ± 5.0 (n=3)" in page
