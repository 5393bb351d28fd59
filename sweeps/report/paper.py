"""The paper's own numbers that a claim's power is quoted against (Kim et al., IJCAI 2021;
docs/claims.md tables them with their sources). Where the paper shows a figure but gives no
number (C1's and C4's distances and shapes, C5's noise results), there is no effect here and
the report prints only what its own data can detect.

Each effect is in the units the report pools: accuracy points for differences, Spearman's rho
for a trend over tau."""

from __future__ import annotations

import math

from scipy import stats

# CIFAR-100, WRN-28-4 -> WRN-16-2, alpha = 1 (the alpha x tau grid), test accuracy %
KL_BY_TAU = {1.0: 72.90, 3.0: 74.24, 5.0: 74.88, 20.0: 75.76, math.inf: 75.51}
# the sequential-distillation table, KL tau = 3, student WRN-16-2
SEQUENTIAL, DIRECT, INTERMEDIATE_ALONE = 74.52, 74.24, 74.84

EFFECTS: dict[str, tuple[float, str]] = {
    # the trend over tau of the grid's alpha = 1 row: rho(tau, accuracy)
    "accuracy trend": (float(stats.spearmanr(list(KL_BY_TAU), list(KL_BY_TAU.values()))
                             .statistic),
                       "Spearman rho of the alpha = 1 row over tau 1, 3, 5, 20, inf (the alpha x "
                       "tau grid)"),
    "sequential - direct": (round(SEQUENTIAL - DIRECT, 2),
                            "74.52 - 74.24 (the sequential-distillation table)"),
    "sequential - intermediate alone": (round(SEQUENTIAL - INTERMEDIATE_ALONE, 2),
                                        "74.52 - 74.84 (the sequential-distillation table)"),
}


def effect(name: str) -> float | None:
    return EFFECTS[name][0] if name in EFFECTS else None
