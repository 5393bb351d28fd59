"""The figures of the paper's analyses of single runs, from their analysis.json: logit-distance
densities and penultimate projections, for one representative run per setting and noise."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from kd_core.names import CLASS_NAMES

from ..domain.plan import setting_order
from .figures import SEED_STYLES, Figures, legend
from .load import full_chains


def representatives(df: pd.DataFrame) -> pd.DataFrame:
    """The generation-1 students of the first direct chain (teacher -> student, no deeper
    generation) at every noise rate, lowest seed: the runs whose distributions and projections
    are drawn."""
    g1 = df[df.generation == 1]
    if g1.empty:
        return g1
    direct = [c for c in full_chains(df) if c.count(">") == 1]
    first = direct[0] if direct else sorted(g1.chain)[0]
    g1 = g1[g1.chain == first]
    return g1[g1.seed == g1.seed.min()]


# The seeds whose logit-distance distributions are drawn, per pair: enough to see the seed
# spread, few enough that the report reads a bounded number of analysis files.
DRAWN_SEEDS = 3
SHARED_BINS = 60


def distribution_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Every teacher-student pair's generation-1 students (alpha = 1 where the grid has it) at
    every noise rate, for the lowest DRAWN_SEEDS seeds."""
    g1 = df[df.generation == 1]
    if g1.empty:
        return g1
    g1 = g1[g1.alpha == g1.alpha.max()]
    return g1[g1.seed.isin(sorted(g1.seed.unique())[:DRAWN_SEEDS])]


def rebinned(h: dict, edges: np.ndarray) -> np.ndarray:
    """A run's histogram on the shared ``edges``, as a density: its cumulative counts,
    interpolated at the shared edges (linear within each of its own bins)."""
    own, counts = np.asarray(h["edges"], float), np.asarray(h["counts"], float)
    cumulative = np.interp(edges, own, np.concatenate([[0.0], np.cumsum(counts)]))
    return np.diff(cumulative) / max(counts.sum(), 1) / np.diff(edges)


def distributions(figs: Figures, analyses: dict[str, dict]) -> None:
    """Logit-distance densities on one set of bins for the whole figure: a row per pair, a
    column per noise rate, a line per setting and seed."""
    runs = distribution_runs(figs.df)
    runs = runs[runs.key.map(lambda k: bool(analyses.get(k, {}).get("train", {})
                                            .get("logit_distance")))]
    if runs.empty:
        return
    hists = {k: analyses[k]["train"]["logit_distance"] for k in runs.key}
    edges = {}  # per noise rate (a column): its own range, its bins shared down the column
    for noise, here in runs.groupby("noise"):
        low = min(hists[k]["edges"][0] for k in here.key)
        high = max(hists[k]["edges"][-1] for k in here.key)
        edges[noise] = np.linspace(low, high, SHARED_BINS + 1)
    pairs = sorted(set(runs.chain))
    seeds = sorted(runs.seed.unique())
    style = {s: SEED_STYLES[i % len(SEED_STYLES)] for i, s in enumerate(seeds)}
    fig, axes = figs.grid(len(pairs), len(figs.noises), sharex="col")
    for row, pair in zip(axes, pairs, strict=True):
        for ax, noise in zip(row, figs.noises, strict=True):
            here = runs[(runs.chain == pair) & (runs.noise == noise)]
            if here.empty:
                ax.set_visible(False)
                continue
            for r in sorted(here.itertuples(), key=lambda r: (setting_order(r.setting), r.seed)):
                ax.stairs(rebinned(hists[r.key], edges[noise]), edges[noise], lw=0.9,
                          color=figs.colours[r.setting], ls=style[r.seed], alpha=0.85)
            ax.set(xlabel="||z_s - z_t||_2 per training image", ylabel="density",
                   title=f"{pair}, noise {noise}")
    legend(fig, axes, figs.colours, set(runs.setting),
           {x: {"marker": None} for x in runs.setting})
    fig.legend(handles=[plt.Line2D([], [], color="0.3", ls=style[s], label=f"seed {s}")
                        for s in seeds], loc="outside right lower", fontsize=7, frameon=False)
    figs.save(fig, "logit_distance_distributions.png",
              "Density of the logit distance over the (unaugmented) training set, final models "
              f"in eval mode, per teacher-student pair (rows) and noise rate (columns, each on "
              f"its own x-range: the scales differ by noise rate): a line per setting (colour) "
              f"and seed (line style; seeds {', '.join(map(str, seeds))}), a column's runs on "
              f"the same {SHARED_BINS} bins (each run's histogram re-binned linearly within "
              "its own bins).")


def class_name(figs: Figures, label) -> str:
    """"3 (cat)" where the dataset's class names are known, else "class 3"."""
    names = CLASS_NAMES.get(figs.df.dataset.iloc[0], ()) if "dataset" in figs.df else ()
    i = int(label)
    if i < len(names) and names[i] != str(i):
        return f"{i} ({names[i]})"
    return f"class {i}"


def analysis_figures(figs: Figures, analyses: dict[str, dict]) -> None:
    """Logit-distance densities on shared bins, and penultimate projections on shared axes
    for every noise rate's representatives."""
    distributions(figs, analyses)
    reps = representatives(figs.df)
    reps = reps[reps.key.isin(analyses.keys())]
    if reps.empty:
        return
    noises = sorted(reps.noise.unique(), key=float)
    chain, seed = reps.chain.iloc[0], reps.seed.iloc[0]

    picks = []  # (label, setting colour, key) per noise: teacher, smallest/largest kl, mse
    for noise in noises:
        here = reps[reps.noise == noise]
        kl = here[here.loss == "kl"].sort_values("tau")
        chosen = [("teacher", here.teacher_key.iloc[0])]
        chosen += [(r.setting, r.key) for r in (kl.iloc[[0, -1]] if len(kl) > 1 else kl)
                   .itertuples()]
        chosen += [("mse", k) for k in here[here.loss == "mse"].key[:1]]
        picks.append((noise, [(n, k) for n, k in chosen if k in analyses]))
    cols = max(len(p) for _, p in picks)
    fig, axes = figs.grid(len(picks), cols)
    for row, (noise, chosen) in zip(axes, picks, strict=True):
        for ax in row[len(chosen):]:
            ax.set_visible(False)
        for ax, (name, key) in zip(row, chosen, strict=False):
            proj = analyses[key]["train"]["projection"]
            t = np.asarray(proj["templates"])
            # in units of the model's own template triangle (its mean side): every model's
            # triangle the same size, so no one model's feature scale sets the axes
            unit = np.mean([np.linalg.norm(t[i] - t[(i + 1) % 3]) for i in range(3)]) or 1.0
            centre = t.mean(axis=0)
            spread = []
            for c, pts in proj["points"].items():
                pts = (np.asarray(pts).reshape(-1, 2) - centre) / unit
                spread.append(pts)
                ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.5, label=class_name(figs, c))
            t = (t - centre) / unit
            ax.plot(*np.vstack([t, t[:1]]).T, "k--", lw=0.8)
            reach = max(np.percentile(np.abs(np.vstack(spread)), 99), np.abs(t).max()) * 1.15
            ax.set(xlim=(-reach, reach), ylim=(-reach, reach), aspect="equal",
                   title=f"{name}\n{chain}, noise {noise}, seed {seed}",
                   xlabel="template plane, axis 1 (template units)", ylabel="axis 2")
    axes[0][0].legend(fontsize=6, markerscale=3)
    figs.save(fig, "penultimate_projection.png",
              "Penultimate features of three classes (training set) projected on the plane "
              "through their templates (dashed triangle: each model's own final-layer rows for "
              "the three classes, as the paper draws them; a teacher's and a student's "
              "features live in different spaces, so there is no one plane for both): the "
              "teacher, the smallest- and largest-tau KL students and the MSE student, one run "
              f"each ({chain}, seed {seed}) per noise rate (rows). Each panel is centred on its "
              "triangle and scaled by the triangle's mean side (its own axes: the whole "
              "triangle and 99% of the points), so no one model's feature scale sets the "
              "axes. The plane keeps 2 of the "
              "features' dimensions: clusters stretched along lines show that these classes' "
              "features vary mostly along one direction in it, not that the model lost the "
              "teacher's shape; claim C4 compares the whole features over every seed (linear "
              "CKA against the teacher), not this picture.")
