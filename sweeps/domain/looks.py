"""A study that adds seeds look by look (grid.add_seeds), pure: which trials a look adds.

A strand is one chain of the spec at one noise rate: for a seed, its teacher, every lineage of
the chain's students (every setting) and the chain's architectures trained alone. A look adds
its seeds' trials of the strands still needed (those of the claims not yet decided,
sweeps/report/sequential.py), as ordinary content-addressed trials: the same keys they would
have had in grid.seeds.
"""

from __future__ import annotations

from .plan import Plan, Trial, build_plan
from .spec import SweepSpec

Strand = tuple[tuple[str, ...], float]  # (chain, noise rate)


def strands(spec: SweepSpec) -> list[Strand]:
    """Every strand of the spec, in the spec's order."""
    return [(tuple(c), float(r)) for r in spec.grid.noise.rate for c in spec.chains]


def in_strand(trial: Trial, strand: Strand) -> bool:
    """The trial belongs to the strand: same noise rate, and on the chain (its teacher or a
    student: a prefix of it) or one of the chain's students' architectures trained alone."""
    chain, rate = strand
    if trial.noise_rate != rate:
        return False
    on_chain = trial.lineage == chain[:len(trial.lineage)]
    return on_chain or (trial.generation == 0 and trial.model in chain[1:])


def with_seeds(spec: SweepSpec, seeds: list[int]) -> SweepSpec:
    """The spec with ``seeds`` as its grid's (no other field changes: the trials' keys are
    those of the same seeds in any grid)."""
    grid = spec.grid.model_copy(update={"seeds": list(seeds), "add_seeds": None})
    out = spec.model_copy(update={"grid": grid})
    out._plugins = spec.loaded_plugins
    return out


def look_trials(spec: SweepSpec, seeds: list[int], needed: set[Strand] | None = None
                ) -> list[Trial]:
    """The trials of ``seeds`` in the ``needed`` strands (None: every strand)."""
    trials = build_plan(with_seeds(spec, seeds)).trials
    if needed is None:
        return trials
    return [t for t in trials if any(in_strand(t, lin) for lin in needed)]


def extend(plan: Plan, seeds: list[int], needed: set[Strand]) -> list[Trial]:
    """Add a look's trials to ``plan``; returns those new to it."""
    return [t for t in look_trials(plan.spec, seeds, needed) if plan.add(t)]


def worst_case(spec: SweepSpec) -> int:
    """Trials if no claim is ever decided: every look's seeds in every strand."""
    return len(build_plan(with_seeds(spec, [s for look in spec.grid.look_seeds()
                                            for s in look])).trials)
