"""`kdsweep report` on a small results table whose numbers are worked out by hand."""

import math
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from sweeps.report import cell, holm, paired, report, resolution, t_interval
from sweeps.report.claims import c1, c2, c3, c5, c6
from sweeps.report.load import load
from sweeps.report.stats import late_rise, p_text
from sweeps.store.results import SCHEMA

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
                "noise_rate": 0.0, "seed": seed, "state": "done", "test_acc": acc,
                "train_logit_distance_median": None if gen == 0 else 1 + acc,
            })
    out.append({**out[-1], "key": "A>B>C-mse-3", "seed": 3, "state": "failed",
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
    # g1 B from A, kl: 70, 72, 74: the seeds' half-width t(2) x 2 / sqrt(3) = 4.97, and 72% on
    # 450 test images (sd 2.12 points, x 1.96 = 4.15), in quadrature: ± 6.5 (never narrower
    # than the seeds' ± 5.0)
    assert "72.0 ± 6.5 (n=3)" in by_row["kl tau=4"]
    assert "81.0 ± 4.4 (n=3)" in by_row["alone (ce)"]  # the teacher, in g0: 2.48 (+) 3.62
    # tied seeds: the test set's binomial sd alone, x 1.96 (60% on 450: 2.31 points)
    assert "60.0 ± 4.5 (n=3)" in by_row["alone (ce)"]  # C alone, in g2
    assert "71.0 ± 4.2 (n=3)" in by_row["mse"]
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
    assert "2           A>B>C  failed       1" in text
    assert "Pearson r" in text and "train set, final models" in text
    names = {p.name for p in paths}
    assert {"accuracy_vs_generation.png", "accuracy_vs_tau.png",
            "logit_distance_vs_accuracy.png", "report.html"} <= names
    # a forest plot per claim with a measured effect (C1: mse - kl tau=4 over g1 and g2)
    assert "forest_c1.png" in names and 'alt="forest_c1"' in (tmp_path / "rep" /
                                                             "report.html").read_text()
    page = (tmp_path / "rep" / "report.html").read_text()
    # a page: real tables, a caption per figure, the header a reader needs
    pngs = [p for p in paths if p.suffix == ".png"]
    assert page.count("<img") == page.count("<figcaption>") == len(pngs) > 0
    assert "<td>72.0 ± 6.5 (n=3)</td>" in page and "<pre>" not in page
    assert "<dt>dataset</dt><dd>digits (1347 train / 450 test images)</dd>" in page
    assert "<dt>selection</dt>" not in page  # a grid: nothing was selected on anything


def latex_rows(tex: str) -> list[list[str]]:
    """A booktabs tabular's body rows, unescaped: what a reader of the PDF sees."""
    body = tex.split("\\midrule", 1)[1].split("\\bottomrule", 1)[0]
    rows = []
    for line in filter(None, (ln.strip() for ln in body.splitlines())):
        cells = re.split(r"(?<!\\)&", line.removesuffix("\\\\"))
        rows.append([re.sub(r"\\([&%_#$])", r"\1", c.strip().replace("$\\pm$", "±")
                            .replace("$<$", "<").replace("$>$", ">"))
                     for c in cells])
    return rows


def test_every_table_is_written_as_csv_and_latex_and_reads_back(tmp_path):
    path = tmp_path / "results.parquet"
    pq.write_table(pa.Table.from_pylist(rows(), schema=SCHEMA), path)
    text, paths = report([str(path)], tmp_path / "rep")
    folder = tmp_path / "rep" / "tables"
    csvs = sorted(folder.glob("*.csv"))
    assert {p for p in paths if p.parent == folder} == {*csvs, *folder.glob("*.tex")}
    assert len(csvs) >= 8 and all(c.with_suffix(".tex").exists() for c in csvs)
    # the accuracy table of chain A>B>C: the cells as printed, in CSV and in LaTeX
    [acc] = [c for c in csvs if "a-to-b-to-c-noise-0" in c.name]
    cells = pd.read_csv(acc)  # a row per cell: its label, column, the cell as printed, numbers
    assert list(cells.columns) == ["setting", "column", "cell", "estimate", "low", "high", "n",
                                   "p"]
    table = cells.pivot(index="setting", columns="column", values="cell")
    table = table.loc[cells.setting.unique(), cells.column.unique()]
    assert list(table.columns) == ["g0 A", "g1 B", "g2 C"]
    assert table.at["kl tau=4", "g1 B"] == "72.0 ± 6.5 (n=3)"  # as in the text report
    assert table.at["kl tau=4", "g1 B"] in text
    # and its numbers, unrounded: 72 ± 6.5 by hand (the seeds' 4.97 and the test set's 4.15
    # in quadrature, above)
    kl = cells[(cells.setting == "kl tau=4") & (cells.column == "g1 B")].iloc[0]
    assert kl.estimate == pytest.approx(72.0) and kl.n == 3
    assert kl.high - kl.estimate == pytest.approx(kl.estimate - kl.low)
    assert kl.high - kl.estimate == pytest.approx(math.hypot(
        stats.t.ppf(0.975, 2) * 2 / math.sqrt(3), 1.96 * 100 * math.sqrt(0.72 * 0.28 / 450)),
        abs=0.01)
    for other in csvs:  # every table reads back as numbers beside its printed cells
        frame = pd.read_csv(other)
        assert {"cell", "estimate", "low", "high", "n", "p"} <= set(frame.columns), other.name
        assert frame.estimate.dtype.kind == "f", other.name
    tex = acc.with_suffix(".tex").read_text()
    assert "\\toprule" in tex
    assert "\\caption{A$>$B$>$C (noise=0): test accuracy \\%, mean $\\pm$ 95\\% interval" in tex
    assert latex_rows(tex) == [[label, *values] for label, values in table.fillna("-").iterrows()]
    # a claim: its pooled table and its row table, each readable back, with its numbers
    pooled = sorted(folder.glob("*-claim-c1-pooled.csv"))
    assert pooled and pd.read_csv(pooled[0]).shape[0] >= 1
    # a second report into the same folder leaves only its own tables
    (folder / "99-stale.csv").write_text("x")
    report([str(path)], tmp_path / "rep")
    assert not (folder / "99-stale.csv").exists()


def test_figure_bands_are_the_tables_intervals_and_ticks_no_finer_than_an_image(tmp_path):
    import matplotlib.pyplot as plt

    from sweeps.report.figures import Figures, resolution_ticks

    path = tmp_path / "results.parquet"
    pq.write_table(pa.Table.from_pylist(rows(), schema=SCHEMA), path)
    df, _ = load([str(path)])
    figs = Figures(df, tmp_path / "figs")
    low, high = figs.band([70.0, 72.0, 74.0])  # the "72.0 ± 6.5 (n=3)" cell of the table
    assert (round(low, 1), round(high, 1)) == (65.5, 78.5)
    low, high = figs.band([60.0, 60.0, 60.0])  # tied seeds: the binomial part, never ± 0
    assert round(high - 60, 1) == 4.5
    assert "the tables' own" in figs.spread and "bootstrap" not in figs.spread
    fig, ax = plt.subplots()
    ax.plot([0, 1], [71.0, 72.0])  # matplotlib's own ticks: 0.2 points apart
    resolution_ticks([ax], figs.step)  # digits: one test image is 0.22 points
    fig.canvas.draw()
    assert min(ax.get_yticks()[1:] - ax.get_yticks()[:-1]) == pytest.approx(0.5)
    plt.close(fig)


def test_the_papers_numbers_stand_beside_ours_where_the_grid_matches(tmp_path):
    names = {"A": "wrn-28-4", "B": "wrn-16-4", "C": "wrn-16-2"}
    rename = lambda text: "".join(names.get(ch, ch) for ch in text)  # noqa: E731
    cifar = [r | {"dataset": "cifar100", "chain": rename(r["chain"]), "model": names[r["model"]],
                  "key": rename(r["key"]), "tau": 3.0 if r["tau"] else None,
                  "teacher_key": r["teacher_key"] and rename(r["teacher_key"])} for r in rows()]
    path = tmp_path / "results.parquet"
    pq.write_table(pa.Table.from_pylist(cifar, schema=SCHEMA), path)
    text, _ = report([str(path)], tmp_path / "rep")
    table = text.split("== wrn-28-4>wrn-16-4>wrn-16-2 (noise=0)")[1].split("\n==")[0]
    by_row = {ln.split("  ")[0].strip(): ln for ln in table.splitlines()}
    # the teacher and each architecture alone (the baselines), the sequential student
    assert by_row["alone (ce)"].count("[paper") == 3
    assert "[paper 77.93]" in by_row["alone (ce)"] and "[paper 72.56]" in by_row["alone (ce)"]
    assert by_row["kl tau=3"].count("[paper") == 1 and "[paper 74.52]" in by_row["kl tau=3"]
    assert "[paper" not in by_row["mse"]  # the paper gives no number for it
    assert "the paper's published accuracy" in table


def test_an_alpha_by_tau_grid_gets_the_papers_maps_and_alphas_are_never_pooled(tmp_path):
    from sweeps.report.figures import Figures

    values = {("A>B", 0.0, name): ([70 + i, 71 + i, 72 + i], [1, 1, 1])
              for i, name in enumerate(("kl0.5", "kl4", "klinf"))}
    one = claim_rows(values)
    half = [r | {"alpha": 0.5, "key": r["key"] + "-a", "test_acc": r["test_acc"] - 0.1}
            for r in one if r["generation"] == 1]
    path = tmp_path / "results.parquet"
    pq.write_table(pa.Table.from_pylist(one + half, schema=SCHEMA), path)
    df, _ = load([str(path)])
    figs = Figures(df, tmp_path / "figs")
    figs.alpha_tau_maps()
    (made, caption), = figs.made
    assert made.name == "alpha_tau_maps.png" and "at least 3 per cell" in caption
    alone = Figures(df[df.alpha != 0.5], tmp_path / "one")  # one alpha: no map
    alone.alpha_tau_maps()
    assert alone.made == []
    text, _ = report([str(path)], tmp_path / "rep")
    table = text.split("== A>B (noise=0)")[1].split("\n==")[0]
    rows_ = {ln.split("  ")[0].strip(): ln for ln in table.splitlines()}
    assert "71.0" in rows_["kl tau=0.5"] and "61.0" in rows_["kl tau=0.5 a=0.5"]  # a row each


def test_results_written_before_the_validation_columns_still_load(tmp_path):
    new = {"val_loss", "val_acc", "selected_on", "validation"}
    old = pa.schema([f for f in SCHEMA if f.name not in new])
    path = tmp_path / "old.parquet"
    pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in old.names} for r in rows()],
                                        schema=old), path)
    df, _ = load([str(path)])
    assert len(df) == 22 and df.selected_on.isna().all()
    text, _ = report([str(path)], tmp_path / "rep")
    assert "72.0 ± 6.5 (n=3)" in text


@pytest.mark.parametrize("metric, says", [
    ("val_acc", "c/s: val_acc (12 searched students), the test set untouched"),
    ("test_acc", "c/s: ON THE TEST SET (test_acc; search.allow_test_metric): its 12 searched"),
])
def test_the_report_says_what_a_search_selected_on(tmp_path, metric, says):
    marked = [r | {"selected_on": metric if r["generation"] > 0 else None} for r in rows()]
    path = tmp_path / "results.parquet"
    pq.write_table(pa.Table.from_pylist(marked, schema=SCHEMA), path)
    report([str(path)], tmp_path / "rep")
    page = (tmp_path / "rep" / "report.html").read_text()
    assert f"<dt>selection</dt><dd>{says}" in page


# ---- the claims, on data whose verdicts are worked out by hand ---------------------------------
TAUS = {"kl0.5": 0.5, "kl4": 4.0, "klinf": math.inf, "mse": None}


def claim_rows(values: dict, seeds=(0, 1, 2), alone: dict | None = None) -> list[dict]:
    """Students of A>B (and A>M>B, M>B) per setting, noise and seed: ``values`` maps
    (chain, noise, setting) -> (accuracies, distances) per seed; A, M and B alone (90%, or
    ``alone``: model -> accuracies per seed)."""
    out = []
    for seed in seeds:
        for model in ("A", "M", "B"):
            for noise in {k[1] for k in values}:
                acc = (alone or {}).get(model, [90] * (seed + 1))[seed] / 100
                out.append({**BASE, "key": f"{model}-{noise}-{seed}", "generation": 0,
                            "chain": model, "model": model, "loss": "ce", "alpha": None,
                            "noise_rate": noise, "seed": seed, "test_acc": acc})
        for (chain, noise, name), (acc, dist) in values.items():
            if seed >= len(acc):
                continue
            teacher = chain.rsplit(">", 1)[0]
            out.append({**BASE, "key": f"{chain}-{noise}-{name}-{seed}", "chain": chain,
                        "generation": chain.count(">"), "model": chain[-1],
                        "teacher_key": f"{teacher}-{noise}-{seed}" if ">" not in teacher
                        else f"{teacher}-{noise}-{name}-{seed}",
                        "loss": "mse" if name == "mse" else "kl", "tau": TAUS[name],
                        "alpha": 1.0, "noise_rate": noise, "seed": seed,
                        "test_acc": acc[seed] / 100, "train_logit_distance_median": dist[seed],
                        "test_acc_curve": [0.5, acc[seed] / 100]})
    return out


BASE = {"sweep": "s", "cluster": "c", "dataset": "digits", "noise_kind": "symmetric",
        "state": "done", "teacher_key": None, "tau": None}


def frame(tmp_path, values, seeds=(0, 1, 2), alone=None):
    path = tmp_path / f"claims{len(seeds)}.parquet"
    pq.write_table(pa.Table.from_pylist(claim_rows(values, seeds, alone), schema=SCHEMA), path)
    df, _ = load([str(path)])
    return df[df.generation > 0], df


def test_c1_verdicts_follow_the_data_and_never_come_from_two_seeds(tmp_path):
    # two rows (noise 0 and 0.2) x 3 seeds; within each seed the distance falls with tau (rho
    # -1), except noise 0.2's seed 1 (3.2, 1.5, 1.7: rho -0.5): the seeds' effects -1, -0.75, -1
    falling = {}
    for noise in (0.0, 0.2):
        falling |= {("A>B", noise, "kl0.5"): ([70, 71, 72], [3.0, 3.2, 3.1]),
                    ("A>B", noise, "kl4"): ([72, 73, 74], [2.0, 2.3 if noise == 0 else 1.5,
                                                           2.1]),
                    ("A>B", noise, "klinf"): ([73, 74, 75], [1.5, 1.7, 1.6]),
                    ("A>B", noise, "mse"): ([74, 74, 76], [0.5, 0.6, 0.7 + noise])}
    students, _ = frame(tmp_path, falling)
    section = c1(students)
    trend = section.lead.loc["rho(tau, distance) within seed"]
    per_seed = [-1.0, -0.75, -1.0]
    low, high = stats.t.interval(0.95, 2, np.mean(per_seed), stats.sem(per_seed))
    # a correlation's interval is cut at -1 (its t-interval runs to -1.28)
    assert trend["estimate [95% interval]"] == f"-0.92 [-1.00, {high:+.2f}]" and low < -1
    assert trend["p (t over seeds)"] == p_text(stats.ttest_1samp(per_seed, 0).pvalue)
    assert trend["units"] == "3 seeds (mean over 2 rows)" and trend.verdict == "consistent"
    assert trend["p sign-flip over seeds"] == "0.250"  # beside it: 2 of 8 patterns, never less
    assert section.verdict.startswith("consistent (rows: 2 of 2 consistent"), section.text()
    students2, _ = frame(tmp_path, falling, seeds=(0, 1))
    section2 = c1(students2)
    assert section2.table.verdict.iloc[0] == "inconclusive at this n (2 seeds)"
    assert set(section2.lead.verdict) == {"inconclusive at this n (2 seeds)"}
    assert "p_Holm" not in section2.text() and section2.verdict.startswith("inconclusive")
    # a rising distance is inconsistent
    rising = {}
    for noise in (0.0, 0.2):
        rising |= {("A>B", noise, "kl0.5"): ([70, 71, 72], [1.0, 1.2, 1.1]),
                   ("A>B", noise, "kl4"): ([72, 73, 74], [2.0, 2.3 if noise == 0 else 3.9,
                                                          2.1]),
                   ("A>B", noise, "klinf"): ([73, 74, 75], [3.5, 3.7, 3.6])}
    students3, _ = frame(tmp_path, rising)
    assert c1(students3).verdict.startswith("inconsistent (rows: 0 of 2 consistent, 2")
    # every seed the same effect (rho -1 in every row and seed): a zero-width interval, no test
    tied = {k: v for k, v in falling.items() if k[1] == 0.0}
    lead = c1(frame(tmp_path, tied)[0]).lead.loc["rho(tau, distance) within seed"]
    assert lead.verdict == "inconclusive: every seed gives the same value (no test)"


def test_a_trend_in_the_same_wrong_order_every_seed_is_flagged_not_inconclusive(tmp_path):
    # distance lowest at tau 4 in every seed (rho -0.5 each seed): reproducibly non-monotone
    values = {("A>B", 0.4, "kl0.5"): ([70, 71, 72], [3.0, 3.2, 3.1]),
              ("A>B", 0.4, "kl4"): ([72, 73, 74], [1.0, 1.1, 1.0]),
              ("A>B", 0.4, "klinf"): ([73, 74, 75], [2.0, 2.1, 2.2])}
    section = c1(frame(tmp_path, values)[0])
    assert section.table.verdict.iloc[0].startswith("contrary in every seed: rho(tau, distance)")
    assert any("reproducibly non-monotone" in n for n in section.notes)


def test_c2_mse_outperforms_the_best_kl_with_non_inferiority_beside(tmp_path):
    values = {("A>B", 0.0, "kl0.5"): ([70, 71, 72], [3.0, 3.2, 3.1]),
              ("A>B", 0.0, "kl4"): ([72, 73, 75], [2.0, 2.3, 2.1]),
              ("A>B", 0.0, "klinf"): ([74, 75, 75], [1.5, 1.7, 1.6]),
              ("A>B", 0.0, "mse"): ([66, 67, 69], [1.0, 1.1, 1.3])}  # 6-8 points worse
    students, _ = frame(tmp_path, values)
    section = c2(students, 1.0)
    assert section.verdict.startswith("inconsistent"), section.text()  # a KL tau beats MSE
    # mse - kl tau=inf = -8, -8, -6: mean -7.33, sd 1.155, t(2) 4.303: [-10.2, -4.5]; the
    # superiority test finds it against MSE (p 0.008, Holm over the 4 effects 0.03)
    inf = section.lead.loc["mse - kl tau=inf"]
    assert inf["estimate [95% interval]"] == "-7.3 [-10.2, -4.5]"
    assert inf.verdict == "inconsistent"
    # beside it (secondary): non-inferiority at margin 1, the same interval wholly below -1
    similar = section.lead.loc["mse - kl tau=inf (similar)"]
    assert similar["estimate [95% interval]"] == inf["estimate [95% interval]"]
    assert similar.verdict == "inferior by more than 1 (secondary: not in the verdict)"
    wide = c2(students, 11.0).lead.loc["mse - kl tau=inf (similar)"]
    assert wide.verdict.startswith("non-inferior (margin 11)")
    row = section.table.loc["g1 A>B"]
    # 66, 67, 69: the seeds' half-width t(2) x 1.53 / sqrt(3) = 3.80 and the test set's 1.96 x
    # 2.21 (67.3% on 450 images) = 4.33, in quadrature: ± 5.8
    assert row["mse"] == "67.3 ± 5.8 (n=3)"
    c = c3(students).table.loc["g1 A>B"]
    # the 12 runs of the pair (all settings): r = +0.26, rho = +0.29 (p = 0.36) over runs; but
    # within each seed, rho = +0.2, +0.2, +0.4 (seed 0: distance ranks 4 3 2 1, accuracy 2 3 4
    # 1): every seed against the claim, so the row says so
    assert (c["runs"], c["seeds"], c["Pearson r"], c["Spearman rho"]) == (12, 3, "+0.26", "+0.29")
    assert c["verdict"] == "contrary in every seed: rho(distance, accuracy) within seed"


def test_c5_small_tau_against_alone_large_and_mse_and_c6_per_seed_differences(tmp_path):
    values = {("A>B", 0.4, "kl0.5"): ([60, 62, 61], [3.0, 3.2, 3.1]),
              ("A>B", 0.4, "klinf"): ([50, 53, 51], [1.5, 1.7, 1.6]),
              ("A>B", 0.4, "mse"): ([52, 52, 55], [1.0, 1.1, 1.3]),
              ("A>M>B", 0.4, "kl0.5"): ([61, 63, 63], [3.0, 3.2, 3.1]),
              ("M>B", 0.4, "kl0.5"): ([62, 65, 63], [3.0, 3.2, 3.1])}
    students, df = frame(tmp_path, values, alone={"B": [50, 51, 53]})
    section = c5(students, df)
    # A>B: tau 0.5 - alone = 10, 11, 8; - inf = 10, 9, 10; - mse = 8, 10, 6: all significant
    # after Holm
    row = section.table.loc["g1 A>B"]
    assert row.verdict == "consistent", section.text()
    assert "kl tau=0.5 - alone +9.7" in row.tests and row["B alone"] == "51.3 ± 6.0 (n=3)"
    # the teacher at 90% in every seed: no seed spread, the test set's alone (450 images:
    # sd 1.41 points, z 1.96): never "± 0.0"
    assert "kl tau=0.5 - kl tau=inf +9.7" in row.tests and row["teacher"] == "90.0 ± 2.8 (n=3)"
    # the seeds' effect of "mitigates": the mean over the 3 rows of each seed's student - alone
    lead = section.lead.loc["kl tau=0.5 - alone (same labels)"]
    assert lead["units"] == "3 seeds (mean over 3 rows)"
    six = c6(students).table.iloc[0]
    # per seed: sequential - direct = 1, 1, 2; sequential - intermediate alone = -1, -2, 0
    assert six["sequential - direct"] == "1.3 ± 1.4 (n=3)"
    assert six["sequential - intermediate alone"] == "-1.0 ± 2.5 (n=3)"
    assert six["verdict"] == "inconclusive"
    pooled = c6(students).lead
    # the paper's effect (+0.28) against this spread (sd 0.58 over 3 seeds)
    assert pooled.loc["sequential - direct", "paper's effect"] == "+0.28"
    # the intermediate trained alone is reported beside, not part of the claim
    assert pooled.loc["sequential - intermediate alone"].verdict.endswith(
        "(secondary: not in the verdict)")


@pytest.mark.parametrize("shift, verdict", [((4.0, 4.0, -0.5), "inconclusive"),
                                             ((4.0, 3.5, 4.5), "consistent")])
def test_a_seed_effect_shared_by_every_row_is_not_evidence(tmp_path, shift, verdict):
    """Three rows whose tau 0.5 - tau inf is the same in every row of a seed (a seed effect:
    +4, +4, -0.5 points; the old rule's 9 units, 6 of them +4, called it consistent): with the
    seed as the unit it is three values, t(2) p 0.24, inconclusive. The same rows with an
    effect consistent over the seeds (+4, +3.5, +4.5) are consistent."""
    jitter = {"A>B": (0.1, -0.1, 0.0), "A>M>B": (0.0, 0.1, -0.1), "M>B": (-0.1, 0.0, 0.1)}
    values = {}
    for chain, j in jitter.items():
        base = [50 + 2 * s for s in range(3)]
        values |= {(chain, 0.4, "klinf"): (base, [1.5, 1.7, 1.6]),
                   (chain, 0.4, "mse"): ([b - 1 for b in base], [1.0, 1.1, 1.3]),
                   (chain, 0.4, "kl0.5"): ([b + d + e for b, d, e in zip(base, shift, j,
                                                                          strict=True)],
                                           [3.0, 3.2, 3.1])}
    students, df = frame(tmp_path, values, alone={"B": [40, 41, 42]})
    section = c5(students, df)
    effect = section.lead.loc["kl tau=0.5 - kl tau=inf"]
    assert effect.verdict == verdict, section.text()
    assert section.verdict.startswith(verdict), section.text()


def test_a_curve_still_rising_over_its_last_fifth():
    # 15 epochs: the last fifth is 3 epochs, 0.92 -> 0.94
    assert late_rise([0.5] * 10 + [0.90, 0.91, 0.92, 0.93, 0.94]) == pytest.approx(0.02)
    assert late_rise([0.5, 0.9, 0.9, 0.9, 0.9]) == pytest.approx(0.0)
    assert math.isnan(late_rise([0.9, 0.91]))


def test_c5_counts_the_runs_that_did_not_learn(tmp_path):
    # B alone is at 90% on digits (chance 10%): a student at 20% is below halfway, 50%
    values = {("A>B", 0.4, "kl0.5"): ([60, 20, 61], [3.0, 3.2, 3.1]),
              ("A>B", 0.4, "klinf"): ([50, 53, 51], [1.5, 1.7, 1.6])}
    students, df = frame(tmp_path, values)
    assert c5(students).table.loc["g1 A>B", "did not learn"] == "1 of 6"
    assert students.stuck.sum() == 1 and not df[df.generation == 0].stuck.any()


def test_results_that_are_not_kdsweeps_are_one_line(tmp_path, kdsweep_here, monkeypatch):
    """Defect 7: a foreign, empty, column-missing or mistyped Parquet raised KeyError or
    TypeError, a corrupt one was named '<Buffer>', and `report --experiment X` created
    ./mlflow.db. Each is now one line naming the file, exit 2, nothing written."""
    monkeypatch.chdir(tmp_path)
    good = pa.Table.from_pylist(rows(), schema=SCHEMA)
    files = {
        "foreign": pa.table({"a": [1, 2], "b": ["x", "y"]}),
        "empty": good.slice(0, 0),
        "missing": good.drop_columns(["seed"]),
        "mistyped": good.set_column(good.column_names.index("generation"), "generation",
                                    pa.array(["first"] * len(good))),
    }
    expect = {
        "foreign": r"foreign.parquet: not a kdsweep results file \(no column sweep, cluster",
        "empty": r"no finished trials in .*empty.parquet",
        "missing": r"missing.parquet: not a kdsweep results file \(no column seed\)",
        "mistyped": r"mistyped.parquet: column generation holds string, not int32",
        "corrupt": r"corrupt.parquet: not a Parquet file",
    }
    for name, table in files.items():
        pq.write_table(table, tmp_path / f"{name}.parquet")
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1" + bytes(100))
    for name, pattern in expect.items():
        code, out, err = kdsweep_here("report", tmp_path / f"{name}.parquet", "--out", "rep")
        [line] = err.splitlines()
        assert code == 2 and re.search(pattern, line), (name, err)
    code, _, err = kdsweep_here("report", "--experiment", "X", "--out", "rep")
    assert code == 2 and "no MLflow store at mlflow.db" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{n}.parquet" for n in expect)  # no mlflow.db, no report folder


def test_projections_name_their_classes():
    import pandas as pd

    from sweeps.report.analysis_figures import class_name

    class Figs:
        df = pd.DataFrame({"dataset": ["cifar100"]})

    assert class_name(Figs, "0") == "0 (apple)" and class_name(Figs, 99) == "99 (worm)"
    Figs.df = pd.DataFrame({"dataset": ["digits"]})  # a digit is its own name
    assert class_name(Figs, "7") == "class 7"
