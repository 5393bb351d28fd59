"""The report's figures (matplotlib/seaborn PNGs), each returned with its caption.

One colour per setting in every figure (kl by tau along viridis, mse red, alone black); a
student (architecture and lineage) is a row of panels, never pooled with another; a band is
drawn only where every point has MIN_SEEDS seeds, and the caption says what it is and its n.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on cluster heads or CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ..plan import setting_order  # noqa: E402
from .load import chain_frame, distance_column, full_chains  # noqa: E402
from .stats import MIN_SEEDS  # noqa: E402

ALONE = "alone (ce)"
PANEL = (3.8, 3.0)  # inches per panel


def palette(settings) -> dict[str, tuple]:
    """Every setting's colour, the same in every figure."""
    names = sorted(set(settings), key=setting_order)
    kl = [s for s in names if s.startswith("kl")]
    colours = dict(zip(kl, sns.color_palette("viridis", len(kl)), strict=True))
    colours.update({s: (0.84, 0.15, 0.16) for s in names if s.startswith("mse")})
    colours[ALONE] = (0.0, 0.0, 0.0)
    return colours


def seeds_per_point(df: pd.DataFrame) -> int:
    """The fewest seeds behind any plotted mean (a setting of a student at a noise rate)."""
    groups = df.groupby(["student", "setting", "noise_rate"], dropna=False)
    return int(groups.seed.nunique().min()) if len(df) else 0


def legend(fig, axes, colours: dict, settings) -> None:
    """One legend for the figure, outside the panels: nothing overprints a curve."""
    handles = [plt.Line2D([], [], color=colours[s], marker="o", lw=1.5, label=s)
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
        self.band = ("ci", 95) if self.n >= MIN_SEEDS else None
        self.made: list[tuple[Path, str]] = []
        out_dir.mkdir(parents=True, exist_ok=True)
        sns.set_theme(style="whitegrid", font_scale=0.8)

    @property
    def spread(self) -> str:
        if self.band:
            return (f"lines: means over seeds (at least {self.n} per point); bands: bootstrap "
                    "95% intervals of the mean over seeds")
        return f"lines: means over seeds ({self.n} per point); no bands below {MIN_SEEDS} seeds"

    def save(self, fig, name: str, caption: str) -> None:
        path = self.out_dir / name
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.made.append((path, caption))

    def grid(self, rows: int, cols: int, **kw):
        return plt.subplots(rows, cols, squeeze=False, layout="constrained",
                            figsize=(PANEL[0] * cols, PANEL[1] * rows), **kw)

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
                for s in sorted(set(here.row) - {ALONE}, key=setting_order):
                    line = pd.concat([teacher[teacher.noise == noise].assign(row=s),
                                      here[here.row == s]])
                    sns.lineplot(data=line, x="g", y="accuracy", color=self.colours[s],
                                 marker="o", errorbar=self.band, ax=ax)
                alone = here[here.row == ALONE].groupby("g").accuracy.mean()
                ax.scatter(alone.index, alone.values, marker="x", s=50, color="k", zorder=5,
                           label="alone (ce), per generation")
                ax.set_xticks(range(len(models)), [f"g{g}\n{m}" for g, m in enumerate(models)])
                ax.set(xlabel="", ylabel="test accuracy %", title=f"{chain}\nnoise {noise}")
        legend(fig, axes, self.colours, set(self.df.setting) - {ALONE})
        self.save(fig, "accuracy_vs_generation.png",
                  "Test accuracy along each chain (rows) per noise rate (columns): lines join a "
                  "setting's students to their teacher (g0); crosses are each generation's "
                  f"architecture trained alone (not a line: separate models). {self.spread}.")

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
                sns.lineplot(data=k, x="x", y="accuracy", color="0.5", errorbar=self.band,
                             ax=ax)
                means = k.groupby("x").accuracy.mean()
                ax.scatter(means.index, means.values, zorder=5,
                           c=[self.colours[s] for s in k.groupby("x").setting.first()])
                self._references(ax, part, noise)
                ax.set_xticks(range(len(labels)), labels)
                ax.set(xlabel="tau (kl)", ylabel="test accuracy %",
                       title=f"{student}\nnoise {noise}")
        legend(fig, axes, self.colours, set(students.setting))
        self.save(fig, "accuracy_vs_tau.png",
                  "Test accuracy of KL students over tau (grey line, dots in each tau's "
                  "colour), per student (rows: architecture and lineage) and noise rate; MSE "
                  "red dashed, the architecture alone black dotted, the teacher grey dotted. "
                  f"{self.spread}.")

    def _references(self, ax, part: pd.DataFrame, noise: str) -> None:
        """MSE, the student's architecture alone, and its teacher's mean, as horizontal lines."""
        mse = part[part.loss == "mse"].accuracy
        if len(mse):
            ax.axhline(mse.mean(), ls="--", color=self.colours["mse"], lw=1.2, label="mse")
        model = part.model.iloc[0]
        alone = self.df[(self.df.generation == 0) & (self.df.model == model)
                        & (self.df.noise == noise)].accuracy
        if len(alone):
            ax.axhline(alone.mean(), ls=":", color="k", lw=1.2, label="alone (ce)")
        teacher = part.drop_duplicates("teacher_key").teacher_acc.dropna() * 100
        if len(teacher):
            ax.axhline(teacher.mean(), ls=":", color="0.6", lw=1.2, label="teacher")

    def accuracy_vs_noise(self) -> None:
        """One panel per student: each setting over the noise rate, alone and teacher as
        dotted lines (direct and sequential students never pooled)."""
        if self.df.noise_rate.nunique() < 2:
            return
        students = self.df[self.df.generation > 0]
        names = sorted(set(students.student))
        fig, axes = self.grid(1, len(names))
        for ax, student in zip(axes[0], names, strict=True):
            part = students[students.student == student]
            sns.lineplot(data=part, x="noise_rate", y="accuracy", hue="setting",
                         palette=self.colours, marker="o", errorbar=self.band, ax=ax)
            model = part.model.iloc[0]
            alone = self.df[(self.df.generation == 0) & (self.df.model == model)]
            sns.lineplot(data=alone, x="noise_rate", y="accuracy", color="k", ls=":",
                         errorbar=None, ax=ax, label="alone (ce)")
            teachers = part.drop_duplicates("teacher_key")
            ax.plot(*zip(*sorted(teachers.groupby("noise_rate").teacher_acc.mean().mul(100)
                                 .items()), strict=True), ls=":", color="0.6", label="teacher")
            ax.set(xlabel="label noise rate", ylabel="test accuracy %", title=student)
        legend(fig, axes, self.colours, set(students.setting))
        self.save(fig, "accuracy_vs_noise.png",
                  "Test accuracy over the label noise rate (teacher trained on the noisy "
                  "labels), one panel per student; the architecture alone black dotted, the "
                  f"teacher grey dotted. {self.spread}.")

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
                sns.scatterplot(data=part, x=col, y="accuracy", hue="setting",
                                palette=self.colours, ax=ax, s=25)
                if (part[col] > 0).all() and part[col].max() / part[col].min() > 20:
                    ax.set_xscale("log")
                ax.set(xlabel=what, ylabel="test accuracy %", title=f"{student}\nnoise {noise}")
        legend(fig, axes, self.colours, set(students.setting))
        self.save(fig, "logit_distance_vs_accuracy.png",
                  f"Each student run's logit distance ({what}) against its test accuracy, per "
                  "teacher-student pair (rows) and noise rate; one dot per run (setting, seed). "
                  "Claim C3's correlations are computed within each panel.")

    def learning_curves(self) -> None:
        """Test accuracy per epoch, per student (row) and noise (column), mean per setting."""
        curves = self.df.dropna(subset=["test_acc_curve"])
        curves = curves[curves.test_acc_curve.map(len) > 0]
        if curves.empty:
            return
        long = curves[["student", "noise", "setting", "seed", "test_acc_curve"]].explode(
            "test_acc_curve")
        long["epoch"] = long.groupby(level=0).cumcount() + 1
        long["accuracy"] = long.test_acc_curve.astype(float) * 100
        names = sorted(set(long.student), key=lambda s: (int(s.split()[0][1:]), s))
        fig, axes = self.grid(len(names), len(self.noises))
        for row, student in zip(axes, names, strict=True):
            for ax, noise in zip(row, self.noises, strict=True):
                part = long[(long.student == student) & (long.noise == noise)]
                if part.empty:
                    ax.set_visible(False)
                    continue
                sns.lineplot(data=part, x="epoch", y="accuracy", hue="setting",
                             palette=self.colours, errorbar=self.band, ax=ax, lw=1)
                top = part.groupby("epoch").accuracy.max().iloc[-1]
                ax.set_ylim(max(0, top - 25), min(100, top + 3))  # the end, where it matters
                ax.set(ylabel="test accuracy %", title=f"{student}\nnoise {noise}")
        legend(fig, axes, self.colours, set(long.setting))
        self.save(fig, "learning_curves.png",
                  "Test accuracy per epoch, per student (rows) and noise rate, one line per "
                  f"setting; the y-axis shows the last 25 points below the top. {self.spread}. "
                  "The convergence table flags runs still rising over their last fifth.")
