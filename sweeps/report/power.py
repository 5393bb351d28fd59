"""`kdsweep plan SPEC --power PILOT`: how many seeds the full grid needs, from a pilot's
variance. Each claim's pooled effects are estimated on the pilot (pooled.py), then projected to
the spec's seeds: the effect the full grid will detect with POWER, and the seeds per row that
detect the paper's own effect and the pilot's estimate. Projections keep the pilot's rows and
their variances: a full grid with more rows per claim detects smaller effects still."""

from __future__ import annotations

import pandas as pd

from ..domain.record import TrialState
from .claims import claims
from .load import load
from .pooled import MAX_SEEDS, POWER, Pooled


def power_table(pilot: list[str], seeds: int, margin: float) -> str:
    """The projection as printed; ``seeds``: the spec's seeds per setting."""
    rows, _ = load(pilot)
    done = rows[rows.state == TrialState.DONE] if not rows.empty else rows
    if done.empty:
        raise ValueError(f"no finished trials in {', '.join(pilot)}: nothing to project from")
    out = []
    for section in claims(done, margin):
        claim = section.title.split(" ", 1)[0]
        for e in section.effects:
            out.append({"claim": claim, "effect": e.name, **_projection(e, seeds)})
    if not out:
        raise ValueError(f"{', '.join(pilot)}: no claim has a tested effect (fewer than three "
                         "seeds per row, or no students)")
    table = pd.DataFrame(out).set_index("claim")
    return (f"power, from the pilot {', '.join(pilot)} (its rows and seed variances), for this "
            f"spec's {seeds} seeds; {POWER:.0%} power at 0.05, two-sided:\n"
            + table.to_string())


def _projection(e: Pooled, seeds: int) -> dict:
    if not e.tested:
        return {"pilot": "no test (fewer than 3 seeds per row)", "detectable": "-",
                "seeds for the paper's": "-", "seeds for the pilot's": "-"}
    return {
        "pilot": f"{e.estimate:+.3g} ({e.rows} rows x {e.seeds} seeds)",
        f"detectable at {seeds} seeds": f"{e.detectable(seeds):.3g}",
        "paper's effect": "-" if e.paper is None else f"{e.paper:+.3g}",
        "seeds for the paper's": _seeds(e, e.paper),
        "seeds for the pilot's": _seeds(e, e.estimate),
    }


def _seeds(e: Pooled, effect: float | None) -> str:
    if effect is None:
        return "-"
    n = e.seeds_for(effect)
    return f"> {MAX_SEEDS}" if n is None else str(n)
