"""The report's figures (matplotlib/seaborn PNGs), each returned with its caption.

One colour per setting in every figure (kl by tau along viridis, mse red, alone black); a
student (architecture and lineage) is a row of panels, never pooled with another; a band is
the tables' own 95% interval (stats.accuracy_interval: seeds plus the test set's binomial
variance), drawn only where every point has MIN_SEEDS seeds, and the caption says so and its n;
a panel holds at most two bands (BANDS), never one per setting, and the caption names the ones
drawn; a band never leaves what its metric allows ([0, 100] %); a handful of noise rates are
categories, not a continuum; seeds are told apart where single runs are drawn; legends draw each
entry as the panels draw it; accuracy ticks are never finer than one test image.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on cluster heads or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from scipy import stats  # noqa: E402

from ..domain.plan import setting_order  # noqa: E402
from .load import chain_frame, distance_column, full_chains  # noqa: E402
from .stats import MIN_SEEDS, accuracy_interval, resolution  # noqa: E402

ALONE = "alone (ce)"
PANEL = (3.8, 3.0)  # inches per panel
BANDS = 2  # the most bands one panel draws
CATEGORIES = 4  # this many noise rates or fewer are drawn as categories
SEED_STYLES = ("-", "--", ":", "-.")  # seeds told apart where single runs are drawn
SEED_MARKERS = ("o", "s", "^", "D", "v", "P")


def palette(settings) -> dict[str, tuple]:
    """Every setting's colour, the same in every figure."""
    names = sorted(set(settings), key=setting_order)
    kl = [s for s in names if s.startswith("kl")]
    colours = dict(zip(kl, sns.color_palette("viridis", len(kl)), strict=True))
    colours.update({s: (0.84, 0.15, 0.16) for s in names if s.startswith("mse")})
    colours[ALONE] = (0.0, 0.0, 0.0)
    # any other loss (a plugin's): a colour of its own, none of viridis's, red or black
    other = [s for s in names if s not in colours]
    tab = [c for i, c in enumerate(sns.color_palette("tab10", 10)) if i not in (3, 7)]
    colours.update({s: tab[i % len(tab)] for i, s in enumerate(other)})
    return colours


def seeds_per_point(df: pd.DataFrame) -> int:
    """The fewest seeds behind any plotted mean (a setting of a student at a noise rate)."""
    groups = df.groupby(["student", "setting", "noise_rate"], dropna=False)
    return int(groups.seed.nunique().min()) if len(df) else 0


def resolution_ticks(axes, step: float | None) -> None:
    """Accuracy ticks no finer than one test image (digits: 0.22 points -> 0.5-point ticks)."""
    if not step:
        return
    nice = next(b * 10 ** e for e in range(-2, 3) for b in (1, 2, 5) if b * 10 ** e >= step)
    for ax in np.asarray(axes).flat:
        ticks = ax.get_yticks()
        if ax.get_visible() and len(ticks) > 1 and ticks[1] - ticks[0] < nice:
            ax.yaxis.set_major_locator(matplotlib.ticker.MultipleLocator(nice))


def heatmap(ax, values: np.ndarray, columns: list[str], rows: list[str],
            labels: np.ndarray | None = None, scale: tuple[float, float] | None = None):
    """An annotated heatmap, blank where there is no value (not seaborn's: it draws the whole
    figure once per heatmap to lay out its tick labels, seconds for a grid of panels).
    ``labels``: each cell's text (else its value); ``scale``: the colour scale's (low, high),
    one for a whole figure. Returns the image (for a colour bar)."""
    low, high = scale or (np.nanmin(values), np.nanmax(values))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto", vmin=low,
                      vmax=high)
    bright = (low + high) / 2
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            text = f"{v:.1f}" if labels is None else labels[i, j]
            ax.text(j, i, text, ha="center", va="center", fontsize=6.5,
                    color="k" if v >= bright else "w")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), rows)
    ax.grid(False)
    return image


def banded(settings) -> list[str]:
    """The (at most BANDS) settings of a panel whose interval is drawn as a band: the largest
    tau of KL at its largest alpha (the paper's arm) and MSE, else the first ones in order."""
    names = sorted(set(settings) - {ALONE}, key=setting_order)
    kl = [s for s in names if s.startswith("kl") and " a=" not in s]
    picks = [*kl[-1:], *(s for s in names if s == "mse")]
    return (picks + [s for s in names if s not in picks])[:BANDS]


def legend(fig, axes, colours: dict, settings, marks: dict | None = None) -> None:
    """One legend for the figure, outside the panels: nothing overprints a curve. ``marks``:
    a setting's Line2D style where the panels draw it otherwise than a line with dots (MSE as
    a dashed reference line, say), so the legend shows what the panels show."""
    marks = marks or {}
    handles = [plt.Line2D([], [], **({"color": colours[s], "marker": "o", "lw": 1.5}
                                     | marks.get(s, {})), label=s)
               for s in sorted(settings, key=setting_order)]
    extra = [h for ax in axes.flat for h in ax.get_legend_handles_labels()[0]
             if h.get_label().startswith(("teacher", "alone"))]
    seen = {}
    for h in extra:
        if h.get_label() not in settings:
            seen.setdefault(h.get_label(), h)
    fig.legend(handles=handles + list(seen.values()), loc="outside right upper",
               fontsize=7, frameon=False)
    for ax in axes.flat:
        if ax.get_legend():
            ax.get_legend().remove()


class Figures:
    """Draws into ``out_dir``; ``made`` collects (path, caption) in drawing order."""

    def __init__(self, df: pd.DataFrame, out_dir: Path):
        self.df = df.assign(accuracy=df.test_acc * 100,
                            noise=df.noise_rate.map(lambda r: f"{r:g}"))
        self.out_dir = out_dir
        self.colours = palette(df.setting)
        self.noises = sorted(self.df.noise.unique(), key=float)
        self.n = seeds_per_point(df)
        self.step, _ = resolution(df)
        self.band = self._interval if self.n >= MIN_SEEDS else None
        self.made: list[tuple[Path, str]] = []
        out_dir.mkdir(parents=True, exist_ok=True)
        sns.set_theme(style="whitegrid", font_scale=0.8)

    def _interval(self, points) -> tuple[float, float]:
        """seaborn's errorbar: a point's accuracies (in points) -> the tables' 95% interval,
        clipped to what an accuracy can be, [0, 100]."""
        mean, half, _ = accuracy_interval(np.asarray(points) / 100, self.step)
        return max(mean - half, 0.0), min(mean + half, 100.0)

    def fill(self, ax, frame: pd.DataFrame, x: str, colour, y: str = "accuracy") -> None:
        """A band: each x's interval of ``y`` (the tables' own, clipped to [0, 100]), where
        bands are drawn at all."""
        if not self.band or frame.empty:
            return
        spans = frame.groupby(x)[y].apply(lambda v: self._interval(v.to_numpy()))
        ax.fill_between(spans.index, [lo for lo, _ in spans], [hi for _, hi in spans],
                        color=colour, alpha=0.2, lw=0)

    @property
    def spread(self) -> str:
        if self.band:
            return (f"lines: means over seeds (at least {self.n} per point); bands: 95% "
                    "intervals of the mean, the tables' own (t over seeds plus the test set's "
                    "binomial variance)")
        return f"lines: means over seeds ({self.n} per point); no bands below {MIN_SEEDS} seeds"

    def save(self, fig, name: str, caption: str) -> None:
        path = self.out_dir / name
        resolution_ticks([a for a in fig.axes if "accuracy" in a.get_ylabel()], self.step)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.made.append((path, caption))

    def grid(self, rows: int, cols: int, **kw):
        return plt.subplots(rows, cols, squeeze=False, layout="constrained",
                            figsize=(PANEL[0] * cols, PANEL[1] * rows), **kw)

    @staticmethod
    def panels(axes, frame: pd.DataFrame, rows: tuple[str, list], cols: tuple[str, list]):
        """(panel, row value, column value, the rows of ``frame`` it draws) for each panel of
        a grid whose rows and columns are values of two columns; a panel with nothing to draw
        is hidden."""
        (row_key, row_values), (col_key, col_values) = rows, cols
        for row, r in zip(axes, row_values, strict=True):
            for ax, c in zip(row, col_values, strict=True):
                part = frame[(frame[row_key] == r) & (frame[col_key] == c)]
                if part.empty:
                    ax.set_visible(False)
                    continue
                yield ax, r, c, part

    # ---- the figures -------------------------------------------------------------------
    def accuracy_vs_generation(self) -> None:
        """Per chain (row) and noise (column): each setting's line from the teacher through the
        generations; the architectures trained alone as black crosses per generation."""
        chains = full_chains(self.df)
        if not chains:
            return
        fig, axes = self.grid(len(chains), len(self.noises))
        for row, chain in zip(axes, chains, strict=True):
            frame, models = chain_frame(self.df, chain), chain.split(">")
            teacher = frame[frame.g == 0]
            for ax, noise in zip(row, self.noises, strict=True):
                here = frame[frame.noise == noise]
                ours = teacher[teacher.noise == noise]
                with_band = banded(here.row)
                for s in sorted(set(here.row) - {ALONE}, key=setting_order):
                    # the teacher's point is each line's start, its interval drawn once below
                    line = pd.concat([ours.assign(row=s), here[here.row == s]])
                    sns.lineplot(data=line, x="g", y="accuracy", color=self.colours[s],
                                 marker="o", ax=ax, lw=1.2 if s in with_band else 0.8,
                                 errorbar=None)
                    if s in with_band:
                        self.fill(ax, line[line.g > 0], "g", self.colours[s])
                if self.band and len(ours):
                    low, high = self._interval(ours.accuracy)
                    mean = ours.accuracy.mean()
                    ax.errorbar([0], [mean], yerr=[[mean - low], [high - mean]], color="k",
                                capsize=3, lw=1, zorder=6)
                alone = here[here.row == ALONE].groupby("g").accuracy.mean()
                ax.scatter(alone.index, alone.values, marker="x", s=50, color="k", zorder=5,
                           label="alone (ce), per generation")
                ax.set_xticks(range(len(models)), [f"g{g}\n{m}" for g, m in enumerate(models)])
                ax.set(xlabel="", ylabel="test accuracy %", title=f"{chain}\nnoise {noise}")
        legend(fig, axes, self.colours, set(self.df.setting) - {ALONE})
        self.save(fig, "accuracy_vs_generation.png",
                  "Test accuracy along each chain (rows) per noise rate (columns): lines join a "
                  "setting's students to their teacher (g0, its interval once as an error bar); "
                  "crosses are each generation's architecture trained alone (not a line: "
                  f"separate models). {self.spread}; bands only for {self._banded_text()} "
                  f"(at most {BANDS} per panel; the tables give every setting's interval).")

    def _banded_text(self) -> str:
        return " and ".join(banded(self.df.setting)) or "no setting"

    def accuracy_vs_tau(self) -> None:
        """Per student (row) and noise (column): KL over tau (equal spacing, inf last), MSE,
        the architecture alone and the teacher as reference lines."""
        students = self.df[self.df.generation > 0]
        kl = students[students.loss == "kl"]
        if kl.empty:
            return
        finite = sorted(t for t in kl.tau.unique() if not math.isinf(t))
        pos = {t: i for i, t in enumerate(finite)}
        labels = [f"{t:g}" for t in finite] + (["inf"] if kl.tau.map(math.isinf).any() else [])
        pos[math.inf] = len(finite)
        names = sorted(set(students.student))
        fig, axes = self.grid(len(names), len(self.noises))
        for row, student in zip(axes, names, strict=True):
            for ax, noise in zip(row, self.noises, strict=True):
                part = students[(students.student == student) & (students.noise == noise)]
                k = part[part.loss == "kl"].assign(x=lambda d: d.tau.map(pos))
                if k.empty:
                    ax.set_visible(False)
                    continue
                top = k.alpha.max()  # the paper's alpha = 1 where the grid has it
                with_band = sorted(k.alpha.unique(), reverse=True)[:BANDS]
                for alpha, line in k.groupby("alpha"):  # alphas never pooled: a line each
                    sns.lineplot(data=line, x="x", y="accuracy", color="0.5",
                                 ls="-" if alpha == top else "--", errorbar=None, ax=ax)
                    if alpha in with_band:
                        self.fill(ax, line, "x", "0.5")
                    means = line.groupby("x").accuracy.mean()
                    ax.scatter(means.index, means.values, zorder=5,
                               c=[self.colours[s] for s in line.groupby("x").setting.first()])
                mine = k[k.alpha == top].drop_duplicates(["x", "teacher_key"])
                teachers = mine.groupby("x").teacher_acc.mean()
                ax.plot(teachers.index, teachers.values * 100, ls=":", marker="v", ms=4,
                        color="0.6", label="teacher (of these students)")
                self._references(ax, part, noise)
                ax.set_xticks(range(len(labels)), labels)
                ax.set(xlabel="tau (kl)", ylabel="test accuracy %",
                       title=f"{student}\nnoise {noise}")
        kl_dot = {"lw": 0, "marker": "o"}
        marks = {s: kl_dot for s in students.setting if s.startswith("kl")}
        marks |= {s: {"ls": "--", "marker": None, "lw": 1.2} for s in students.setting
                  if s.startswith("mse")}
        legend(fig, axes, self.colours, set(students.setting), marks)
        self.save(fig, "accuracy_vs_tau.png",
                  "Test accuracy of KL students over tau (grey line, dots in each setting's "
                  "colour; the largest alpha solid, each other alpha its own dashed line), per "
                  "student (rows: architecture and lineage) and noise rate; MSE red dashed, "
                  "any other loss's settings (a plugin's) dash-dotted in their colours, "
                  "the architecture alone black dotted; grey triangles: the mean accuracy of "
                  "the teachers of each tau's students at the largest alpha (in generation 2, "
                  "each tau's own lineage). The objective is (1 - alpha) CE + alpha tau^2 KL: "
                  "alpha 0.9 is the field's standard KD, 0.1 CE + 0.9 tau^2 KL. "
                  f"{self.spread}; bands for the {BANDS} largest alphas only.")

    def _references(self, ax, part: pd.DataFrame, noise: str) -> None:
        """MSE, any other loss's settings (a plugin's) and the student's architecture alone,
        as horizontal lines."""
        mse = part[part.loss == "mse"].accuracy
        if len(mse):
            ax.axhline(mse.mean(), ls="--", color=self.colours["mse"], lw=1.2, label="mse")
        others = part[~part.loss.isin(["kl", "mse"])]
        for setting, acc in others.groupby("setting").accuracy:  # one line per setting
            ax.axhline(acc.mean(), ls="-.", color=self.colours[setting], lw=1.2, label=setting)
        model = part.model.iloc[0]
        alone = self.df[(self.df.generation == 0) & (self.df.model == model)
                        & (self.df.noise == noise)].accuracy
        if len(alone):
            ax.axhline(alone.mean(), ls=":", color="k", lw=1.2, label="alone (ce)")

    def accuracy_vs_noise(self) -> None:
        """Per student (row) and setting (column): accuracy over the noise rate, with the
        architecture alone and the teachers of these students as dotted lines; one band per
        panel (direct and sequential students never pooled)."""
        if self.df.noise_rate.nunique() < 2:
            return
        students = self.df[self.df.generation > 0]
        names = sorted(set(students.student))
        settings = sorted(set(students.setting), key=setting_order)
        rates = sorted(self.df.noise_rate.unique())
        few = len(rates) <= CATEGORIES  # a handful of rates: categories, not a continuum
        at = {r: i for i, r in enumerate(rates)} if few else {r: r for r in rates}
        fig, axes = self.grid(len(names), len(settings), sharey="row")
        for ax, student, setting, part in self.panels(axes, students, ("student", names),
                                                      ("setting", settings)):
            model = part.model.iloc[0]
            alone = self.df[(self.df.generation == 0) & (self.df.model == model)]
            for frame, colour, shift in ((part, self.colours[setting], 0.0),
                                         (alone, "k", 0.08 if few else 0.0)):
                means = frame.groupby("noise_rate").accuracy
                x = np.array([at[r] for r in means.mean().index]) + shift
                if self.band:
                    spans = means.apply(lambda v: self._interval(v.to_numpy()))
                    low = means.mean().to_numpy() - [lo for lo, _ in spans]
                    high = [hi for _, hi in spans] - means.mean().to_numpy()
                    ax.errorbar(x, means.mean(), yerr=[low, high], color=colour, capsize=3,
                                marker="o", ms=4, lw=0.8 if few else 1.2,
                                ls=(":" if colour == "k" else "-"))
                else:
                    ax.plot(x, means.mean(), color=colour, marker="o", ms=4,
                            ls=(":" if colour == "k" else "-"))
            teachers = part.drop_duplicates("teacher_key")
            mean = teachers.groupby("noise_rate").teacher_acc.mean().mul(100)
            ax.plot([at[r] - (0.08 if few else 0) for r in mean.index], mean.values, ls="",
                    marker="v", ms=5, color="0.5", label="teacher (of these students)")
            if few:
                ax.set_xticks(range(len(rates)), [f"{r:g}" for r in rates])
                ax.set_xlim(-0.5, len(rates) - 0.5)
            ax.set(xlabel="label noise rate", ylabel="test accuracy %",
                   title=f"{student}\n{setting}")
        handles = [plt.Line2D([], [], color=self.colours[s], marker="o", label=s)
                   for s in settings]
        handles += [plt.Line2D([], [], color="k", ls=":", marker="o", label="alone (ce)"),
                    plt.Line2D([], [], color="0.5", ls="", marker="v",
                               label="teacher (of these students)")]
        fig.legend(handles=handles, loc="outside right upper", fontsize=7, frameon=False)
        how = ("each rate a category (points with 95% intervals as error bars; the "
               "architecture alone offset to the right, the teachers to the left)" if few else
               "rates on a continuous axis")
        self.save(fig, "accuracy_vs_noise.png",
                  "Test accuracy per label noise rate (teachers trained on the noisy labels), "
                  f"per student (rows) and setting (columns), {how}; the architecture alone "
                  "black dotted, the mean of these students' own teachers grey triangles. "
                  f"{self.spread.replace('bands', 'error bars')}.")

    def alpha_tau_maps(self) -> None:
        """The paper's maps: per student (row), noise rate and split (columns), mean train and
        test accuracy over seeds for each alpha (rows) x tau (columns) of its KL students;
        drawn where the grid has at least two of each."""
        kl = self.df[(self.df.generation > 0) & (self.df.loss == "kl")]
        if kl.alpha.nunique() < 2 or kl.tau.nunique() < 2:
            return
        kl = kl.assign(tau_label=kl.tau.map(lambda t: "inf" if math.isinf(t) else f"{t:g}"),
                       train=kl.train_acc * 100)
        taus = [("inf" if math.isinf(t) else f"{t:g}") for t in sorted(kl.tau.unique())]
        alphas = sorted(kl.alpha.unique(), reverse=True)
        names = sorted(set(kl.student))
        panels = [(noise, split) for noise in self.noises for split in ("accuracy", "train")]
        scale = (float(kl[["accuracy", "train"]].min().min()),
                 float(kl[["accuracy", "train"]].max().max()))
        fig, axes = self.grid(len(names), len(panels))
        image = None
        for row, student in zip(axes, names, strict=True):
            for ax, (noise, split) in zip(row, panels, strict=True):
                part = kl[(kl.student == student) & (kl.noise == noise)]
                cells = {(a, t): v[split].to_numpy() for (a, t), v in
                         part.groupby(["alpha", "tau_label"])}
                values = np.full((len(alphas), len(taus)), np.nan)
                labels = np.full(values.shape, "", dtype=object)
                for (i, a), (j, t) in itertools.product(enumerate(alphas), enumerate(taus)):
                    if (a, t) in cells:
                        mean, half, n = accuracy_interval(  # train: no test-set term
                            cells[a, t] / 100, self.step if split == "accuracy" else None)
                        values[i, j] = mean
                        labels[i, j] = (f"{mean:.1f}\n±{half:.1f} n={n}" if np.isfinite(half)
                                        else f"{mean:.1f}\nn={n}")
                if np.isnan(values).all():
                    ax.set_visible(False)
                    continue
                image = heatmap(ax, values, taus, [f"{a:g}" for a in alphas], labels, scale)
                what = "test" if split == "accuracy" else "train"
                ax.set(xlabel="tau", ylabel="alpha",
                       title=f"{student}\nnoise {noise}, {what} accuracy %")
        if image is not None:
            fig.colorbar(image, ax=axes, shrink=0.6, label="accuracy % (one scale, every panel)")
        n = int(kl.groupby(["student", "noise", "alpha", "tau"]).seed.nunique().min())
        self.save(fig, "alpha_tau_maps.png",
                  "The paper's alpha x tau maps: mean accuracy over seeds (at least "
                  f"{n} per cell) of each KL student, per student (rows), noise rate and split "
                  "(test; train: the running accuracy over each final epoch's augmented "
                  "batches, against the labels trained on), alpha weighing the distillation "
                  "term ((1 - alpha) CE + alpha tau^2 KL). One colour scale for every panel; "
                  "each cell prints its mean, the half-width of its 95% interval (the tables' "
                  "own; none below 3 seeds) and its n. Blank: not in the grid.")

    def distance_vs_accuracy(self) -> None:
        """Per student (row) and noise (column): each run's logit distance and accuracy."""
        students = self.df[self.df.generation > 0]
        if students.empty:
            return
        col, what = distance_column(students)
        names = sorted(set(students.student))
        fig, axes = self.grid(len(names), len(self.noises))
        for row, student in zip(axes, names, strict=True):
            for ax, noise in zip(row, self.noises, strict=True):
                part = students[(students.student == student) & (students.noise == noise)]
                if part.empty or part[col].isna().all():
                    ax.set_visible(False)
                    continue
                part = part.dropna(subset=[col])
                log = bool((part[col] > 0).all() and part[col].max() / part[col].min() > 20)
                rhos = []
                for i, (seed, runs) in enumerate(part.groupby("seed")):
                    marker = SEED_MARKERS[i % len(SEED_MARKERS)]
                    ax.scatter(runs[col], runs.accuracy, s=22, marker=marker, zorder=4,
                               c=[self.colours[x] for x in runs.setting], edgecolors="none")
                    if len(runs) >= 3 and min(runs[col].nunique(), runs.accuracy.nunique()) > 1:
                        x = np.log10(runs[col]) if log else runs[col]
                        slope, icpt = np.polyfit(x, runs.accuracy, 1)
                        xs = np.linspace(x.min(), x.max(), 20)
                        ax.plot(10 ** xs if log else xs, slope * xs + icpt, color="0.3",
                                lw=0.8, ls=SEED_STYLES[i % len(SEED_STYLES)])
                        rhos.append((seed, stats.spearmanr(runs[col], runs.accuracy)[0]))
                if log:
                    ax.set_xscale("log")
                if rhos:
                    text = "within-seed rho: " + ", ".join(f"s{s} {r:+.2f}" for s, r in rhos)
                    ax.text(0.02, 0.02, text, transform=ax.transAxes, fontsize=6,
                            va="bottom", bbox={"fc": "white", "alpha": 0.7, "lw": 0})
                ax.set(xlabel=what, ylabel="test accuracy %", title=f"{student}\nnoise {noise}")
        seeds = sorted(students.seed.unique())
        marks = {s: {"lw": 0, "marker": "o"} for s in students.setting}
        legend(fig, axes, self.colours, set(students.setting), marks)
        handles = [plt.Line2D([], [], color="0.3", lw=0.8, ls=SEED_STYLES[i % len(SEED_STYLES)],
                              marker=SEED_MARKERS[i % len(SEED_MARKERS)], label=f"seed {s}")
                   for i, s in enumerate(seeds)]
        fig.legend(handles=handles, loc="outside right lower", fontsize=7, frameon=False)
        self.save(fig, "logit_distance_vs_accuracy.png",
                  f"Each student run's logit distance ({what}) against its test accuracy, per "
                  "teacher-student pair (rows) and noise rate; one mark per run, coloured by "
                  "setting, shaped by seed; a least-squares line per seed (on log distance where "
                  "the axis is logarithmic) through that seed's runs, and each seed's Spearman "
                  "rho in the corner: C3 is a within-seed claim (runs of one seed share a "
                  "teacher), and its verdict pools these within-seed rhos over its primary "
                  "settings (the C3 table).")

    def learning_curves(self) -> None:
        """Test accuracy per epoch, per student (row) and setting (column), a line per noise
        rate, with the student's architecture trained alone (black, no band) beside it."""
        curves = self.df.dropna(subset=["test_acc_curve"])
        curves = curves[curves.test_acc_curve.map(len) > 0]
        if curves.empty:
            return
        long = curves[["student", "generation", "model", "noise", "setting", "seed",
                       "test_acc_curve"]].explode("test_acc_curve")
        long["epoch"] = long.groupby(level=0).cumcount() + 1
        long["accuracy"] = long.test_acc_curve.astype(float) * 100
        alone = long[long.generation == 0]
        long = long[long.generation > 0]
        if long.empty:
            return
        names = sorted(set(long.student), key=lambda s: (int(s.split()[0][1:]), s))
        settings = sorted(set(long.setting), key=setting_order)
        styles = dict(zip(self.noises, ["-", "--", ":", "-."] * len(self.noises), strict=False))
        fig, axes = self.grid(len(names), len(settings), sharey="row")
        for ax, student, setting, part in self.panels(axes, long, ("student", names),
                                                      ("setting", settings)):
            for noise, curve in part.groupby("noise"):
                for _, one in curve.groupby("seed"):  # each seed's own run, thin
                    ax.plot(one.epoch, one.accuracy, ls=styles[noise], lw=0.5, alpha=0.45,
                            color=self.colours[setting])
                mean = curve.groupby("epoch").accuracy.mean()
                ax.plot(mean.index, mean.values, ls=styles[noise], lw=1.4,
                        color=self.colours[setting], label=f"noise {noise}")
                ref = alone[(alone.model == part.model.iloc[0]) & (alone.noise == noise)]
                ax.plot(ref.groupby("epoch").accuracy.mean(), ls=styles[noise], lw=0.8,
                        color="k", label=f"alone (ce), noise {noise}")
            top = part.groupby("epoch").accuracy.max().iloc[-1]
            ax.set_ylim(max(0, top - 25), min(100, top + 3))  # the end, where it matters
            ax.set(ylabel="test accuracy %", title=f"{student}\n{setting}")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        legend(fig, axes, self.colours, set(long.setting),  # its "alone" lines: the styles
               {x: {"marker": None} for x in long.setting})
        self.save(fig, "learning_curves.png",
                  "Test accuracy per epoch, per student (rows) and setting (columns), the "
                  "student's architecture trained alone in black (mean, no band); noise "
                  f"rates by line style ({', '.join(f'{n}: {styles[n]}' for n in self.noises)})"
                  f"; the y-axis shows the last 25 points below the top. Thick lines: the mean "
                  "over seeds; thin lines: each seed's run (no band: with three seeds a t "
                  "interval per epoch would fill the panel). "
                  "The convergence table flags runs still rising over their last fifth.")
