"""Which ready work goes first: the longest remaining chain of work (the critical path).

At 32+ GPUs a sweep's makespan is set by its longest dependency chain (teacher -> its bank ->
student -> its bank -> the student's student), not by the total work, so among trials that are
ready the engine hands out the one with the most work still to follow it; ties go in plan order.
The remaining work depends only on a trial's lineage (its children keep its loss, tau, noise and
seed), so it is computed once per lineage. The engine and benchmarks/schedule_sim.py share it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache

from kd_core.profile import forward_macs


def trial_costs(models: list[str], num_classes: int, image_shape: tuple[int, ...]) -> dict:
    """A relative cost per architecture: forward + backward ~ 3 forward passes (MACs per image).
    Teacher forwards are left out: a bank removes them, and online they scale with the
    student's chain position only mildly compared to the spread between architectures."""
    return {m: 3.0 * forward_macs(m, num_classes, image_shape) for m in models}


def next_models(chains: list[list[str]], lineage: tuple[str, ...]) -> list[str]:
    """Architectures distilled from a model of ``lineage`` (the chains that continue past it)."""
    g = len(lineage)
    return list(dict.fromkeys(c[g] for c in chains if len(c) > g and tuple(c[:g]) == lineage))


def remaining_work(
    chains: list[list[str]],
    cost: Mapping[str, float],
    bank_cost: Callable[[str], float] | None = None,
) -> Callable[[tuple[str, ...]], float]:
    """lineage -> the trial's own cost plus the longest chain of work below it (a bank of the
    trial's model, when ``bank_cost`` gives one, comes before its students)."""

    @cache
    def work(lineage: tuple[str, ...]) -> float:
        below = [work((*lineage, m)) for m in next_models(chains, lineage)]
        if not below:
            return cost[lineage[-1]]
        bank = bank_cost(lineage[-1]) if bank_cost else 0.0
        return cost[lineage[-1]] + bank + max(below)

    return work
