"""A forest plot per claim (PNG, with its caption): each effect the verdict is drawn from, with
the seed as the unit: its estimate and 95% interval (the t over seeds that decides it, the same
interval as the claim's table), its decision and p, and the effect this n detects with 80%
power marked on the side the claim predicts. Effects in other units (a rho beside accuracy
points) get panels of their own; a secondary effect (shown, not decided on) is drawn hollow."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from .evidence import digits  # noqa: E402
from .pooled import POWER  # noqa: E402
from .stats import p_text  # noqa: E402
from .tables import Section  # noqa: E402

COLOURS = {"consistent": "#2e7d32", "inconsistent": "#c62828", "inconclusive": "#757575",
           "non-inferior": "#2e7d32", "inferior": "#c62828"}


def _unit(name: str) -> str:
    if name.startswith("rho"):
        return "Spearman rho (within seed)"
    if name.startswith("log"):
        return "log ratio"
    if name.startswith("CKA"):
        return "CKA difference"
    return "difference"


def forest(sections: list[Section], out_dir: Path) -> list[tuple[Path, str]]:
    """One PNG per claim that has effects; each returned with its caption."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for section in sections:
        if not any(e.tested or e.rows for e in section.effects):
            continue  # nothing measured (an arm missing): the claim's table says so
        claim = section.title.split(" ", 1)[0]
        path = out_dir / f"forest_{claim.lower()}.png"
        draw(section, path)
        made.append((path, caption(section)))
    return made


def draw(section: Section, path: Path) -> None:
    lead = section.lead
    groups: dict[str, list] = {}
    for e in section.effects:
        groups.setdefault(_unit(e.name), []).append(e)
    heights = [len(v) + 0.8 for v in groups.values()]
    height = 0.42 * sum(heights) + 1.6
    fig, axes = plt.subplots(len(groups), 1, figsize=(11.5, height),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (unit, effects) in zip(axes[:, 0], groups.items(), strict=True):
        _panel(ax, unit, effects, lead)
    title = textwrap.fill(f"{section.title}: {section.verdict.split(' (')[0]}", 95)
    fig.suptitle(title, fontsize=9.5, x=0.01, ha="left")
    handles = [Line2D([], [], color=c, marker="o", ls="-", label=w)
               for w, c in (("consistent / non-inferior", COLOURS["consistent"]),
                            ("inconsistent / inferior", COLOURS["inconsistent"]),
                            ("inconclusive", COLOURS["inconclusive"]))]
    handles += [Line2D([], [], color="#1565c0", marker="|", ls="", markersize=11,
                       label=f"detectable at {POWER:.0%} power (this n)"),
                Line2D([], [], color="k", marker="o", ls="", mfc="white",
                       label="secondary (not in the verdict)")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7.5, frameon=False)
    # room for the effects' names on the left and their numbers and decisions on the right
    fig.subplots_adjust(left=0.2, right=0.6, top=1 - 0.75 / height, bottom=1.15 / height,
                        hspace=0.9 / max(1, len(groups) - 1) if len(groups) > 1 else 0.2)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _panel(ax, unit: str, effects: list, lead) -> None:
    lows = []
    for i, e in enumerate(effects):
        y = len(effects) - 1 - i
        verdict = str(lead.at[e.name, "verdict"]) if e.name in lead.index else "inconclusive"
        word = verdict.split()[0].rstrip(":")
        colour = COLOURS.get(word, COLOURS["inconclusive"])
        secondary = "secondary" in verdict
        face = "white" if secondary else colour
        if e.tested:
            ax.plot([e.low, e.high], [y, y], color=colour, lw=2.2, solid_capstyle="butt")
            lows += [e.low, e.high]
        if not math.isnan(e.estimate):
            ax.plot(e.estimate, y, "o", color=colour, mfc=face, ms=6.5, zorder=3)
            lows.append(e.estimate)
        if e.tested and e.margin is None and not math.isnan(d := e.detectable()):
            ax.plot(e.expected * d, y, "|", color="#1565c0", ms=13, mew=2, zorder=4)
            lows.append(e.expected * d)
        if e.margin is not None:
            edge = -e.expected * e.margin
            ax.plot([edge, edge], [y - 0.4, y + 0.4], color="#ef6c00", ls="--", lw=1.2)
            lows.append(edge)
        d = digits(e, 2 if unit != "difference" else 1)
        p = (f"p {p_text(e.p)}" + (" (one-sided)" if e.margin is not None else "")
             if e.tested else "no test")
        text = (f"{e.estimate:+.{d}f} [{e.low:+.{d}f}, {e.high:+.{d}f}]  {p}"
                if e.tested else f"{p}")
        short = verdict.replace(" (secondary: not in the verdict)", " (secondary)")
        ax.annotate(f"{text}  {textwrap.shorten(short, 48)}", (1.01, y),
                    xycoords=("axes fraction", "data"), va="center", fontsize=7.5, color=colour)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(effects)), [e.name for e in reversed(effects)], fontsize=8)
    ax.set_ylim(-0.7, len(effects) - 0.3)
    if lows:
        lo, hi = min(lows + [0.0]), max(lows + [0.0])
        pad = 0.08 * (hi - lo or 1.0)
        ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel(f"{unit}: estimate and 95% interval, the seed as the unit", fontsize=8)
    ax.tick_params(axis="x", labelsize=7.5)
    ax.grid(axis="x", alpha=0.3)


def caption(section: Section) -> str:
    seeds = sorted({e.seeds for e in section.effects if e.tested})
    n = (f"{seeds[0]} seeds" if len(seeds) == 1 else
         f"{seeds[0]}-{seeds[-1]} seeds" if seeds else "no tested effect")
    return (f"{section.title.split(' ', 1)[0]}, each effect of the claim ({n}): the dot is the "
            "mean over seeds of each seed's effect (the mean over the claim's rows), the bar "
            "its 95% t-interval over seeds (the test that decides; zero outside it exactly when "
            f"p < 0.05); colour: the decision; blue tick: the effect this n detects with "
            f"{POWER:.0%} power, on the side the claim predicts; dashed orange: a "
            "non-inferiority margin; hollow: secondary (shown, not decided on). The claim's "
            "table gives the same numbers and the row-by-row evidence.")
