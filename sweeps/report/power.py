"""`kdsweep plan SPEC --power PILOT`: how many seeds the full grid needs, from a pilot's spread
over seeds. Each claim's effects are estimated on the pilot with the seed as the unit
(pooled.py), then the test that decides (the t over seeds) is projected to the spec's seeds: the
effect it detects with POWER, the power at the paper's effect (a "similar" part: at a true
difference of 0), the seeds those need, and each claim's joint power (every effect found).
Projections keep the pilot's rows; a full grid with more rows per claim averages over more.

A pilot is only evidence for a spec of its own dataset and architectures: another is refused
unless asked for (``other``), and then every projected figure names the pilot's dataset."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..domain.record import TrialState
from .claims import claims
from .evidence import joint_power, joint_seeds, truth
from .load import load
from .pooled import MAX_SEEDS, POWER, Pooled

OTHER_FLAG = "--project-from-other-dataset"


def power_table(pilot: list[str], spec, other: bool = False) -> str:
    """The projection as printed, for ``spec``'s seeds per setting; ``other``: the user asked to
    project a pilot of another dataset or other architectures."""
    for item in pilot:
        if Path(item).is_dir():
            raise ValueError(f"--power {item}: a directory; give results files (.parquet) or "
                             "spec files (.yaml)")
    rows, _ = load(pilot)
    done = rows[rows.state == TrialState.DONE] if not rows.empty else rows
    if done.empty:
        raise ValueError(f"no finished trials in {', '.join(pilot)}: nothing to project from")
    datasets = sorted(set(done.dataset.dropna()))
    models = sorted(set(done.model.dropna()))
    wanted = spec.dataset.name
    differs = datasets != [wanted] or not set(models) <= set(spec.architectures)
    if differs and not other:
        raise ValueError(
            f"--power {', '.join(pilot)}: the pilot is {'/'.join(datasets)} "
            f"({', '.join(models)}), this spec is {wanted} ({', '.join(spec.architectures)}): "
            f"its seeds' spread is no evidence for this spec; {OTHER_FLAG} projects it anyway")
    where = f" ({'/'.join(datasets)} pilot)" if differs else ""
    seeds = len(spec.grid.seeds)
    out, notes = [], []
    for section in claims(done, spec.report.similar_margin):
        claim = section.title.split(" ", 1)[0]
        for e in section.effects:
            out.append({"claim": claim, "effect": e.name, **_projection(e, seeds, where)})
        primary = _primary(section)
        if len(primary) > 1 and all(e.tested for e in primary):
            truths = [truth(e) for e in primary]
            power = joint_power(primary, truths, seeds)
            if not math.isnan(power):
                line = (f"{claim}: joint power (all {len(primary)} effects found) at {seeds} "
                        f"seeds{where}: {power:.2f}")
                if all(e.paper is not None or e.margin is not None for e in primary):
                    n = joint_seeds(primary, truths)
                    line += f"; {POWER:.0%} at {n or f'more than {MAX_SEEDS}'} seeds"
                else:
                    line += " (effects without the paper's value at their detectable effect)"
                notes.append(line)
    if not out:
        raise ValueError(f"{', '.join(pilot)}: no claim has a tested effect (fewer than three "
                         "seeds, or no students)")
    table = pd.DataFrame(out).set_index("claim")
    head = (f"power of the test that decides (a t over seeds, the seed as the unit), from the "
            f"pilot {', '.join(pilot)} (its rows and its seeds' spread), for this spec's {seeds} "
            f"seeds; {POWER:.0%} power at 0.05, two-sided (similar: one-sided 0.025 at a true "
            f"difference of 0):")
    if differs:
        head = (f"PROJECTED FROM ANOTHER DATASET ({OTHER_FLAG}): the pilot is "
                f"{'/'.join(datasets)} ({', '.join(models)}), this spec {wanted} "
                f"({', '.join(spec.architectures)}); every figure "
                f"below is the {'/'.join(datasets)} pilot's spread\n" + head)
    return "\n".join([head, table.to_string(), *notes])


def _primary(section) -> list[Pooled]:
    """The effects a claim's verdict rests on (a secondary part's are shown, not decided on)."""
    secondary = set(section.lead.index[section.lead.verdict.str.contains("secondary")]) \
        if section.lead is not None and not section.lead.empty else set()
    return [e for e in section.effects if e.name not in secondary]


def _projection(e: Pooled, seeds: int, where: str) -> dict:
    if not e.tested:
        return {"pilot": "no test (fewer than 3 seeds, or every seed the same)",
                f"detectable at {seeds} seeds{where}": "-", "paper's effect": "-",
                f"power at {seeds} seeds{where}": "-", f"seeds for {POWER:.0%}{where}": "-"}
    at = 0.0 if e.margin is not None else e.paper
    return {
        "pilot": f"{e.estimate:+.3g} ({e.seeds} seeds x {e.rows} rows)",
        f"detectable at {seeds} seeds{where}": "-" if e.margin is not None
        else f"{e.detectable(seeds):.3g}",
        "paper's effect": ("0 (similar)" if e.margin is not None else
                           "-" if e.paper is None else f"{e.paper:+.3g}"),
        f"power at {seeds} seeds{where}": "-" if at is None else f"{e.power(at, seeds):.2f}",
        f"seeds for {POWER:.0%}{where}": _seeds(e, at),
    }


def _seeds(e: Pooled, effect: float | None) -> str:
    if effect is None:
        return "-"
    n = e.seeds_for(effect)
    return f"> {MAX_SEEDS}" if n is None else str(n)
