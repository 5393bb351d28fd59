"""The paper's own numbers (Kim et al., IJCAI 2021; docs/claims.md tables them with their
sources): printed beside the report's cells where the grid matches, and the effects a claim's
power is quoted against. Where the paper shows a figure but gives no
number (C1's and C4's distances and shapes, C5's noise results), there is no effect here and
the report prints only what its own data can detect.

Each effect is in the units the report pools: accuracy points for differences, Spearman's rho
for a trend over tau."""

from __future__ import annotations

from scipy import stats

# The published test accuracies (CIFAR-100, %, no label noise), keyed as the report names a
# cell: (dataset, lineage, setting); a lineage is the chain to the student ("wrn-16-2" alone,
# "wrn-28-4>wrn-16-2" distilled), a setting as plan.setting_name writes it (alpha = 1 unless
# it says). The value: (accuracy, where the paper gives it).
ALONE, GRID, PAIRS, SEQ = ("the baselines trained alone", "the alpha x tau grid, alpha = 1",
                           "other students, alpha = 1, tau = 20",
                           "the sequential-distillation table, KL tau = 3")
PUBLISHED: dict[tuple[str, str, str], tuple[float, str]] = {
    ("cifar100", "wrn-16-2", "alone (ce)"): (72.56, ALONE),
    ("cifar100", "wrn-16-4", "alone (ce)"): (76.89, ALONE),
    ("cifar100", "wrn-28-2", "alone (ce)"): (74.83, ALONE),
    ("cifar100", "wrn-40-2", "alone (ce)"): (75.80, ALONE),
    ("cifar100", "wrn-28-4", "alone (ce)"): (77.93, ALONE + " (the teacher)"),
    ("cifar100", "wrn-28-4>wrn-16-2", "kl tau=1"): (72.90, GRID),
    ("cifar100", "wrn-28-4>wrn-16-2", "kl tau=3"): (74.24, GRID + "; " + SEQ + ", direct"),
    ("cifar100", "wrn-28-4>wrn-16-2", "kl tau=5"): (74.88, GRID),
    ("cifar100", "wrn-28-4>wrn-16-2", "kl tau=20"): (75.76, GRID),
    ("cifar100", "wrn-28-4>wrn-16-2", "kl tau=inf"): (75.51, GRID),
    ("cifar100", "wrn-28-4>wrn-16-4", "kl tau=20"): (78.84, PAIRS),
    ("cifar100", "wrn-28-4>wrn-28-2", "kl tau=20"): (77.36, PAIRS),
    ("cifar100", "wrn-28-4>wrn-40-2", "kl tau=20"): (77.80, PAIRS),
    ("cifar100", "wrn-16-4>wrn-16-2", "kl tau=3"): (74.84, SEQ + ", from WRN-16-4 trained alone"),
    ("cifar100", "wrn-28-4>wrn-16-4>wrn-16-2", "kl tau=3"): (74.52, SEQ + ", sequential"),
}


def published(dataset: str, lineage: str, setting: str, noise_rate: float) -> float | None:
    """The paper's accuracy (%) for a report cell, where its grid matches one (no noise)."""
    if noise_rate != 0:
        return None
    found = PUBLISHED.get((dataset, lineage, setting))
    return found[0] if found else None


_DIRECT = "wrn-28-4>wrn-16-2"
KL_BY_TAU = {float(s.split("=")[1]): v for (_, lineage, s), (v, _) in PUBLISHED.items()
             if lineage == _DIRECT}
SEQUENTIAL = PUBLISHED[("cifar100", "wrn-28-4>wrn-16-4>wrn-16-2", "kl tau=3")][0]
DIRECT = PUBLISHED[("cifar100", _DIRECT, "kl tau=3")][0]
INTERMEDIATE_ALONE = PUBLISHED[("cifar100", "wrn-16-4>wrn-16-2", "kl tau=3")][0]

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
