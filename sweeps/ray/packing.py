"""Trial packing: measure each kind of trial in a short run, suggest per-architecture resources.

`kdsweep plan SPEC --measure` runs every distinct trial shape of the plan (a model trained on
labels, or a student with its teacher online or read from a bank) for a few steps, each in a
fresh Ray worker holding a whole GPU (or the trial's CPUs), and turns the measured peaks into
`resources.models`. It also measures fusion (kd_core/fused.py): for each student architecture
with siblings, K of them fused against one at a time, at K = 2, 4, 8 up to the most siblings a
teacher has, and records that in the sweep's storage (store/measured.py), where ``fuse: auto``
reads it. Ray does not watch GPU memory, so the GPU fraction of an architecture is
its footprint's share of a GPU, rounded up to 1/n: trials of any mix whose fractions sum to at
most one fit in the GPU's memory.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import ray
import torch
import yaml

from kd_core import registry
from kd_core.data import ImageData
from kd_core.profile import FusionProfile, GiB, MemoryProfile, Shape, profile_fusion, profile_run

from ..domain.fusion import sibling_key
from ..domain.plan import Plan, make_trial, students_per_teacher
from ..domain.spec import SweepSpec
from .teacher_bank import logit_source_of
from .trial import run_spec


def _student(spec: SweepSpec, data: ImageData, model: str, teacher: str, siblings: int) -> Shape:
    # "shared", "private" or "online": a shared bank's pages are the node's, not the trial's
    return Shape(model, teacher, logit_source_of(spec.train, data, siblings)[0])


def plan_shapes(spec: SweepSpec, plan: Plan, data: ImageData) -> Counter:
    """Shape -> number of planned trials (for optuna, up to num_samples per teacher)."""
    counts: Counter = Counter()
    per_teacher = students_per_teacher(plan.trials)
    for t in plan.trials:
        if t.teacher_key is None:
            counts[Shape(t.model)] += 1
        else:
            counts[_student(spec, data, t.model, t.lineage[-2], per_teacher[t.teacher_key])] += 1
    if spec.search.type == "optuna":  # students are sampled during the sweep
        n = spec.search.num_samples
        teachers = len(spec.grid.noise.rate) * len(spec.grid.seeds)
        lineages = {tuple(c[: g + 1]) for c in spec.chains for g in range(1, len(c))}
        for lineage in sorted(lineages):
            counts[_student(spec, data, lineage[-1], lineage[-2], n)] += n * teachers
    return counts


def _measure(spec_dict: dict, shape: Shape, steps: int, plugins: tuple = ()) -> MemoryProfile:
    for plugin in plugins:  # as the runtime environment shipped them (plugins.py)
        registry.import_shipped(plugin)
    spec = SweepSpec.model_validate(spec_dict)
    torch.set_num_threads(max(1, int(spec.resources.for_model(shape.model)["cpu"])))
    if shape.teacher is None:
        trial = make_trial(spec, shape.model, None, noise_rate=0.0, seed=0)
    else:
        parent = make_trial(spec, shape.teacher, None, noise_rate=0.0, seed=0)
        trial = make_trial(
            spec, shape.model, parent, loss="kl", tau=4.0, alpha=1.0, noise_rate=0.0, seed=0
        )
    return profile_run(run_spec(spec, trial), shape.teacher, shape.logit_source, steps)


def measure(spec: SweepSpec, shapes: list[Shape], steps: int) -> dict[Shape, MemoryProfile]:
    """Profile each shape in its own fresh worker process (max_calls=1), so that peak memory is
    that one run's; needs a connected Ray. A GPU sweep measures on a whole GPU."""
    gpus = 1 if spec.resources.uses_gpu else 0
    task = ray.remote(max_calls=1)(_measure)
    refs = {
        s: task.options(num_cpus=spec.resources.for_model(s.model)["cpu"], num_gpus=gpus).remote(
            spec.model_dump(), s, steps, spec.loaded_plugins
        )
        for s in shapes
    }
    return {s: ray.get(r) for s, r in refs.items()}


def sibling_groups(spec: SweepSpec, plan: Plan, data: ImageData) -> dict[Shape, int]:
    """Per student architecture that has siblings (fusion.sibling_key), its most common shape
    (teacher, logit source) and the most siblings one of its groups has (for optuna, the
    samples per teacher)."""
    groups: Counter = Counter(sibling_key(t) for t in plan.trials)
    groups.pop(None, None)
    per_teacher = students_per_teacher(plan.trials)
    shapes: dict[str, Counter] = {}
    most: Counter = Counter()
    teacher_model = {t.key: t.model for t in plan.trials}
    for key, n in groups.items():
        teacher_key, model = key[0], key[1]
        shape = _student(spec, data, model, teacher_model[teacher_key], per_teacher[teacher_key])
        shapes.setdefault(model, Counter())[shape] += n
        most[model] = max(most[model], n)
    if spec.search.type == "optuna":
        n = spec.search.num_samples
        for lineage in {tuple(c[: g + 1]) for c in spec.chains for g in range(1, len(c))}:
            shapes.setdefault(lineage[-1], Counter())[
                _student(spec, data, lineage[-1], lineage[-2], n)] += n
            most[lineage[-1]] = max(most[lineage[-1]], n)
    return {c.most_common(1)[0][0]: most[m] for m, c in shapes.items() if most[m] > 1}


def fusion_ks(siblings: int) -> list[int]:
    """The group sizes measured for an architecture with at most ``siblings`` per group."""
    return sorted({k for k in (2, 4, 8) if k < siblings} | {min(siblings, 64)})


def _measure_fusion(spec_dict: dict, shape: Shape, ks: list[int], steps: int, rounds: int,
                    plugins: tuple = ()) -> list[FusionProfile]:
    for plugin in plugins:
        registry.import_shipped(plugin)
    spec = SweepSpec.model_validate(spec_dict)
    torch.set_num_threads(max(1, int(spec.resources.for_model(shape.model)["cpu"])))
    parent = make_trial(spec, shape.teacher, None, noise_rate=0.0, seed=0)
    trial = make_trial(spec, shape.model, parent, loss="kl", tau=4.0, alpha=1.0, noise_rate=0.0,
                       seed=0)
    return profile_fusion(run_spec(spec, trial), shape.teacher, shape.logit_source, ks, steps,
                          rounds)


def measure_fusion(spec: SweepSpec, groups: dict[Shape, int], steps: int, rounds: int = 2
                   ) -> dict[Shape, list[FusionProfile]]:
    """Fused against separate student-steps/s for each shape at fusion_ks(its siblings), each
    in a fresh worker with the architecture's CPUs (and a whole GPU on a GPU sweep); needs a
    connected Ray."""
    gpus = 1 if spec.resources.uses_gpu else 0
    task = ray.remote(max_calls=1)(_measure_fusion)
    refs = {
        s: task.options(num_cpus=spec.resources.for_model(s.model)["cpu"], num_gpus=gpus).remote(
            spec.model_dump(), s, fusion_ks(n), steps, rounds, spec.loaded_plugins)
        for s, n in groups.items()
    }
    return {s: ray.get(r) for s, r in refs.items()}


def render_fusion(measured: dict[Shape, list[FusionProfile]], groups: dict[Shape, int],
                  steps: int) -> str:
    """The fusion measurements as a table, and what ``fuse: auto`` makes of them."""
    from ..domain.fusion import PAYS, group_limit

    lines = [f"fusion: sibling students fused against one at a time, student-steps/s (median; "
             f"{steps} steps per mode and round)",
             f"{'model':<12} {'K':>3} {'separate':>9} {'fused':>9} {'speedup':>8} "
             f"{'device GiB':>10}"]
    for shape, profiles in measured.items():
        for p in profiles:
            lines.append(f"{shape.model:<12} {p.k:>3} {p.separate:>9.1f} {p.fused:>9.1f} "
                         f"{p.speedup:>7.2f}x {p.footprint / GiB:>10.2f}")
        k = group_limit("auto", shape.model, gpu=False,
                        measured={p.k: p.speedup for p in profiles})
        lines.append(f"  fuse: auto -> {shape.model}: "
                     + (f"up to {k} siblings per job" if k > 1 else
                        f"one per job (no K reached {PAYS}x)")
                     + f" (at most {groups[shape]} siblings per teacher)")
    return "\n".join(lines)


def _round_up(x: float, step: float = 0.01) -> float:
    return math.ceil(x / step - 1e-9) * step


@dataclass(frozen=True)
class Suggestion:
    models: dict[str, dict]  # architecture -> {gpu, memory_gb} for resources.models
    warnings: list[str]


def suggest(
    measured: dict[Shape, MemoryProfile], headroom: float = 0.1, max_per_gpu: int = 8
) -> Suggestion:
    """Per-architecture resources from the largest footprint among its shapes.

    GPU: 1/n of a GPU with n = how many such footprints fit in (1 - headroom) of its memory,
    at most ``max_per_gpu`` (past a few trials they only queue for the same cores).
    Host: memory_gb = the peak resident set plus headroom, for Ray's memory resource.
    """
    models: dict[str, dict] = {}
    warnings = []
    for model in dict.fromkeys(s.model for s in measured):
        profiles = [p for s, p in measured.items() if s.model == model]
        out = {
            "memory_gb": round(
                _round_up(max(p.host_peak for p in profiles) * (1 + headroom) / GiB), 2
            )
        }
        gpu = [p for p in profiles if p.device != "cpu"]
        if gpu:
            worst = max(gpu, key=lambda p: p.footprint / p.device_total)
            n = min(max_per_gpu, int(worst.device_total * (1 - headroom) // worst.footprint))
            if n == 0:
                warnings.append(
                    f"{model}: needs {worst.footprint / GiB:.1f} GiB, more than "
                    f"{1 - headroom:.0%} of a {worst.device_total / GiB:.0f} GiB GPU"
                )
            out = {"gpu": 1.0 if n <= 1 else math.floor(1e4 / n) / 1e4, **out}
        models[model] = out
    return Suggestion(models, warnings)


def render(
    spec: SweepSpec,
    counts: Counter,
    measured: dict[Shape, MemoryProfile],
    suggestion: Suggestion,
    steps: int,
) -> str:
    """The measurements as a table, the suggestion as YAML to paste into the spec, and the
    sweep's cost at one trial per device."""
    first = next(iter(measured.values()))
    where = f"{first.device} ({first.device_total / GiB:.0f} GiB)"
    lines = [
        f"measured on {where}: {steps} steps of batch {spec.train.batch_size} per shape",
        f"{'model':<12} {'trained':<26} {'trials':>6} {'device GiB':>10} {'host GiB':>9} "
        f"{'step ms':>8} {'epoch s':>8}",
    ]
    hours = 0.0
    for shape, p in measured.items():
        hours += counts[shape] * spec.train.epochs * p.epoch_seconds / 3600
        lines.append(
            f"{shape.model:<12} {shape.label:<26} {counts[shape]:>6} {p.footprint / GiB:>10.2f} "
            f"{p.host_peak / GiB:>9.2f} {p.step_seconds * 1e3:>8.1f} {p.epoch_seconds:>8.2f}"
        )
    lines.append(
        f"estimated compute: {hours:.2f} device-hours for {sum(counts.values())} trials x "
        f"{spec.train.epochs} epochs, one trial per device at a time"
    )
    if first.device == "cpu":
        lines.append("no GPU here: GPU fractions need a measurement on a GPU node")
    resources = {
        "cpu": spec.resources.cpu,
        "gpu": spec.resources.gpu,
        "models": suggestion.models,
    }
    lines.append("suggested resources (paste into the spec):")
    lines.append(yaml.safe_dump({"resources": resources}, default_flow_style=None, sort_keys=False))
    lines += [f"warning: {w}" for w in suggestion.warnings]
    return "\n".join(lines).rstrip()
