"""The figures of the paper's analyses of single runs, from their analysis.json: logit-distance
densities and penultimate projections, for one representative run per setting and noise."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..plan import setting_order
from .figures import Figures, legend
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


def analysis_figures(figs: Figures, analyses: dict[str, dict]) -> None:
    """Logit-distance densities (comparable across runs whatever their bins) and penultimate
    projections on shared axes, for every noise rate's representatives."""
    reps = representatives(figs.df)
    reps = reps[reps.key.isin(analyses.keys())]
    if reps.empty:
        return
    noises = sorted(reps.noise.unique(), key=float)
    chain, seed = reps.chain.iloc[0], reps.seed.iloc[0]
    fig, axes = figs.grid(1, len(noises), sharex=True)
    for ax, noise in zip(axes[0], noises, strict=True):
        for r in sorted(reps[reps.noise == noise].itertuples(),
                        key=lambda r: setting_order(r.setting)):
            h = analyses[r.key]["train"].get("logit_distance")
            if h:
                edges, counts = np.asarray(h["edges"]), np.asarray(h["counts"], float)
                density = counts / max(counts.sum(), 1) / np.diff(edges)
                ax.stairs(density, edges, color=figs.colours[r.setting], lw=1.2)
        ax.set(xlabel="||z_s - z_t||_2 per training image", ylabel="density",
               title=f"{chain}, noise {noise}, seed {seed}")
    legend(fig, axes, figs.colours, set(reps.setting))
    figs.save(fig, "logit_distance_distributions.png",
              "Density of the logit distance over the (unaugmented) training set, final models "
              f"in eval mode: one run per setting ({chain}, seed {seed}) per noise rate; "
              "densities, so runs with different bins compare.")

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
    fig, axes = figs.grid(len(picks), cols, sharex=True, sharey=True)
    for row, (noise, chosen) in zip(axes, picks, strict=True):
        for ax in row[len(chosen):]:
            ax.set_visible(False)
        for ax, (name, key) in zip(row, chosen, strict=False):
            proj = analyses[key]["train"]["projection"]
            for c, pts in proj["points"].items():
                pts = np.asarray(pts).reshape(-1, 2)
                ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.5, label=f"class {c}")
            t = np.asarray(proj["templates"])
            ax.plot(*np.vstack([t, t[:1]]).T, "k--", lw=0.8)
            ax.set(title=f"{name}\n{chain}, noise {noise}, seed {seed}",
                   xlabel="template plane, axis 1", ylabel="axis 2")
    axes[0][0].legend(fontsize=6, markerscale=3)
    figs.save(fig, "penultimate_projection.png",
              "Penultimate features of three classes (training set) projected on the plane "
              "through their templates (dashed triangle), on shared axes: the teacher, the "
              "smallest- and largest-tau KL students and the MSE student, one run each "
              f"({chain}, seed {seed}) per noise rate (rows). Claim C4 gives the CKA over seeds.")
