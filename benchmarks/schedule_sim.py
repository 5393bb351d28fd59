"""Discrete-event simulation of a sweep's schedule on N GPUs: barrier vs dependency-driven.

Models the plan of any spec (grid search) as jobs: every trial, and the bank build of every
teacher whose students read a shared bank (the sweep's own policy, sweeps/ray/teacher_bank.py).
Durations: per-epoch seconds per trial shape, either measured (``--measured``: the CPU figures
of benchmarks/trial_memory.py in RESULTS.md, scaled) or from forward MACs (default: a trial
costs 3 forwards of its model per image, plus its teacher's forward when online; a bank build
costs one teacher forward per view). Every job gets a straggler factor U(0.8, 1.2). Spot
preemptions: a Poisson process per node of ``--gpus-per-node`` GPUs; a preempted job loses the
work since its last checkpoint (one epoch; a bank build loses everything) and the node is back
after ``--replace-hours``. Random draws are per job and per node, the same for both policies.

Policies, one job per GPU:
- barrier: the previous engine: generation g, then every bank its students need, then g+1.
- plan order: dependency-driven, but ready jobs taken in plan order (no critical path).
- dependency: the current engine: a job starts once its teacher (and bank) is done; among
  ready jobs the one with the most work after it goes first (sweeps/domain/critical_path.py's
  remaining_work on the engine's own cost estimate, not on the simulated durations).
Lower bound: max(longest chain of jobs, total work / GPUs).

    PYTHONPATH=. .venv/bin/python benchmarks/schedule_sim.py sweeps/configs/cifar100-paper.yaml \
        --gpus 8 16 32 64 --measured

With ``--students`` (benchmarks/students_per_gpu.py's JSON, one per student architecture, as
the GPU suite writes them): the grid's device-hours on one GPU with its students run one per
GPU, packed, fused, and fused with the step captured, from the measured figures
(``device_hours``).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kd_core.bank import bank_nbytes, logit_source
from kd_core.data import Augment
from kd_core.names import DATASET_FACTS
from kd_core.profile import forward_macs
from sweeps.domain.critical_path import remaining_work, trial_costs
from sweeps.domain.plan import build_plan, students_per_teacher
from sweeps.domain.spec import load_spec

# Epoch seconds per shape on the project's CPU (benchmarks/trial_memory.py, RESULTS.md).
MEASURED_CPU = {
    ("wrn-28-4", None, None): 1115,
    ("wrn-16-4", None, None): 668,
    ("wrn-16-2", None, None): 138,
    ("wrn-16-2", "wrn-28-4", "bank"): 165,
    ("wrn-16-4", "wrn-28-4", "bank"): 578,
    ("wrn-16-2", "wrn-16-4", "bank"): 143,
    ("wrn-16-2", "wrn-28-4", "online"): 460,
}
def data_facts(name: str):
    f = DATASET_FACTS[name]
    return f["train"], f["classes"], f["shape"], Augment(f["padding"], f["flip"])


@dataclass
class Job:
    key: str
    kind: str  # "trial" | "bank"
    lineage: tuple[str, ...]
    generation: int
    work: float  # hours on one GPU, straggler included
    deps: list[str] = field(default_factory=list)
    epochs: int = 1  # checkpoints per run (a bank has none: 1 means all is lost)


def build_jobs(spec, measured: bool, teacher_hours: float, seed: int) -> list[Job]:
    n, k, shape, aug = data_facts(spec.dataset.name)
    epochs = spec.train.epochs
    macs = {m: forward_macs(m, k, shape) for m in spec.architectures}
    plan = build_plan(spec)
    per_teacher = students_per_teacher(plan.trials)
    nbytes = bank_nbytes(n, aug, k, getattr(torch, spec.train.bank_dtype))
    sources = {  # the sweep's own policy (kd_core.bank.logit_source)
        t: logit_source(count, epochs, aug.n_views, nbytes, spec.train.bank_budget_gb * 2**30,
                        spec.train.teacher_bank)[0]
        for t, count in per_teacher.items()
    }
    banked = {t for t, source in sources.items() if source == "shared"}
    by_key = {t.key: t for t in plan.trials}
    first = plan.generations[0][0].model

    def epoch_cost(model, teacher, source):  # relative units: MACs per image
        shape = (model, teacher, "bank" if source == "shared" else source)  # a bank is a bank
        if measured and shape in MEASURED_CPU:  # scaled to the MACs units
            return (
                MEASURED_CPU[shape]
                / MEASURED_CPU[(first, None, None)]
                * (3 * macs[first])
            )
        return 3 * macs[model] + (macs[teacher] if source == "online" else 0)

    unit = teacher_hours / (epochs * epoch_cost(first, None, None))
    rng = random.Random(seed)
    jobs = []
    for t in plan.trials:
        teacher = by_key.get(t.teacher_key)
        source = None if teacher is None else sources[t.teacher_key]
        if source == "private":  # the bank built inside the trial: its epochs run as with a bank
            source = "bank"
            build = aug.n_views * macs[teacher.model] * unit
        else:
            build = 0.0
        cost = epoch_cost(t.model, teacher and teacher.model, source) * epochs * unit + build
        deps = (
            []
            if teacher is None
            else [t.teacher_key] + ([f"bank:{t.teacher_key}"] if t.teacher_key in banked else [])
        )
        jobs.append(
            Job(t.key, "trial", t.lineage, t.generation, cost * rng.uniform(0.8, 1.2), deps, epochs)
        )
        if t.key in banked:
            build = aug.n_views * macs[t.model] * unit  # one teacher forward per view
            jobs.append(
                Job(
                    f"bank:{t.key}",
                    "bank",
                    t.lineage,
                    t.generation,
                    build * rng.uniform(0.8, 1.2),
                    [t.key],
                )
            )
    return jobs


def lower_bound(jobs: list[Job], gpus: int) -> float:
    by = {j.key: j for j in jobs}
    finish: dict[str, float] = {}

    def f(key):
        if key not in finish:
            j = by[key]
            finish[key] = j.work + max((f(d) for d in j.deps), default=0.0)
        return finish[key]

    return max(max(f(j.key) for j in jobs), sum(j.work for j in jobs) / gpus)


def simulate(jobs, gpus, per_node, policy, priority, rate, replace, seed):
    """Makespan and busy GPU-hours (work done, lost work included)."""
    by = {j.key: j for j in jobs}
    left = {j.key: j.work for j in jobs}
    order = {j.key: i for i, j in enumerate(jobs)}
    stage = {j.key: 2 * j.generation + (j.kind == "bank") for j in jobs}
    done: set[str] = set()
    running: dict[int, tuple[str, float]] = {}  # gpu -> (job, start)
    down_until = [0.0] * ((gpus + per_node - 1) // per_node)
    rng = random.Random(seed)
    events: list[tuple[float, int, str, int]] = []  # (time, seq, kind, gpu or node)
    seq = 0

    def push(t, kind, who):
        nonlocal seq
        heapq.heappush(events, (t, seq, kind, who))
        seq += 1

    for node in range(len(down_until)):
        if rate > 0:
            push(rng.expovariate(rate), "preempt", node)

    def rank(key):
        j = by[key]
        p = priority(j.lineage) + (1e9 if j.kind == "bank" else 0.0)
        if policy == "dependency":
            return (-p, order[key])
        return (stage[key], order[key])  # barrier, and "plan order" (dependency, no priority)

    def ready():
        waiting = [k for k in left if k not in done and all(r[0] != k for r in running.values())]
        if policy == "barrier":  # only the lowest unfinished stage may run
            low = min((stage[k] for k in waiting), default=None)
            busy = {stage[k] for k, _ in running.values()}
            if busy and low is not None and min(busy) < low:
                return []
            waiting = [k for k in waiting if stage[k] == low]
        return sorted((k for k in waiting if all(d in done for d in by[k].deps)), key=rank)

    now, busy_hours = 0.0, 0.0

    def fill():
        free = [g for g in range(gpus) if g not in running and down_until[g // per_node] <= now]
        for g, key in zip(free, ready(), strict=False):
            running[g] = (key, now)
            push(now + left[key], "end", g)

    fill()
    while len(done) < len(jobs):
        now, _, kind, who = heapq.heappop(events)
        if kind == "end":
            if who not in running:
                continue
            key, start = running[who]
            if abs(start + left[key] - now) > 1e-9:
                continue  # a stale end of a job that was preempted and restarted
            busy_hours += now - start
            del running[who]
            done.add(key)
        elif kind == "preempt":
            node = who
            for g in range(node * per_node, min(gpus, (node + 1) * per_node)):
                if g in running:
                    key, start = running.pop(g)
                    ran = now - start
                    interval = by[key].work / by[key].epochs
                    kept = ran - (ran % interval) if by[key].epochs > 1 else 0.0
                    busy_hours += ran
                    left[key] -= kept
            down_until[node] = now + replace
            push(now + replace, "up", node)
            push(now + rng.expovariate(rate), "preempt", node)
        fill()
    return now, busy_hours


def compare(spec, gpus: int, *, per_node: int = 8, teacher_hours: float = 1.0,
            measured: bool = False, rate: float = 0.05, replace: float = 0.1,
            seeds: int = 5) -> dict[str, float]:
    """Hours to finish ``spec`` on ``gpus`` GPUs under each policy, and the lower bound and the
    dependency policy's GPU busy fraction, each the mean over ``seeds`` draws."""
    _, k, shape, _ = data_facts(spec.dataset.name)
    priority = remaining_work(spec.chains, trial_costs(spec.architectures, k, shape))
    rows = []
    for s in range(seeds):
        jobs = build_jobs(spec, measured, teacher_hours, seed=s)
        common, tail = (gpus, per_node), (priority, rate, replace, 1000 + s)
        b, _ = simulate(jobs, *common, "barrier", *tail)
        f, _ = simulate(jobs, *common, "plan order", *tail)
        d, busy = simulate(jobs, *common, "dependency", *tail)
        rows.append((b, f, d, lower_bound(jobs, gpus), busy / (d * gpus)))
    names = ("barrier", "plan order", "dependency", "bound", "busy")
    return {n: sum(r[i] for r in rows) / len(rows) for i, n in enumerate(names)}


# Ways of running the students, by what students_per_gpu.py measured (its variant names).
MODES = ("one", "packed", "fused", "fused captured")


def device_hours(spec, measured: list[dict], capture: str = "graphs") -> dict:
    """The device-hours of ``spec``'s plan on one GPU, for each way of running its students
    (``MODES``), from benchmarks/students_per_gpu.py's figures (``measured``: its JSON, one
    per student architecture). The sum of every job's time on one GPU (a GPU with hundreds of
    ready trials never idles, so the order is left out): a trial is its epochs x training
    images at its student-images/s; bank builds (shared or private) are the teacher's views x
    images at the measured bank build's views/s; an online student adds its teacher's forward
    at that rate. ``one``: every trial alone. ``packed``: students K to a GPU at the packed
    figure (teachers and trials on labels alone: not measured packed). ``fused``: each
    teacher's siblings (fusion.sibling_key) in jobs of at most K, a job of s members at the
    rate interpolated between one (s = 1) and fused K (s = K); ``fused captured``: the same
    at the captured figures. Architectures not measured take a measured one's rates scaled
    by forward MACs (modelled: launch-bound steps do not scale so); so does a teacher's rate
    on the labels and its bank build (``scaled`` lists what was)."""
    from collections import Counter

    from sweeps.domain.fusion import sibling_key

    n, classes, shape, aug = data_facts(spec.dataset.name)
    epochs = spec.train.epochs
    plan = build_plan(spec)
    by_key = {t.key: t for t in plan.trials}
    per_teacher = students_per_teacher(plan.trials)
    nbytes = bank_nbytes(n, aug, classes, getattr(torch, spec.train.bank_dtype))
    sources = {t: logit_source(count, epochs, aug.n_views, nbytes,
                               spec.train.bank_budget_gb * 2**30, spec.train.teacher_bank)[0]
               for t, count in per_teacher.items()}
    k = min(m["k"] for m in measured)
    macs = {}

    def mac(model):
        if model not in macs:
            macs[model] = forward_macs(model, classes, shape)
        return macs[model]

    def median(m, name):
        v = m["variants"].get(name, {})
        return v.get("median")

    student = {m["model"]: {"one": median(m, "one"), "packed": median(m, f"packed {k}"),
                            "fused": median(m, f"fused {k}"),
                            "captured": median(m, f"fused {k} {capture}"),
                            "one captured": median(m, f"one {capture}")} for m in measured}
    teacher = {m["teacher"]: median(m, "teacher") for m in measured}
    views_per_s = {m["teacher"]: m["bank_build"]["views_per_s"] for m in measured}
    scaled: set[str] = set()

    def rate(table, model, key=None, what=None):
        """``table``'s figure for ``model`` (students: under ``key``), else the measured
        architecture nearest in MACs, scaled by MACs (and named in ``scaled``)."""
        def get(m):
            v = table[m]
            return v if key is None else v.get(key)

        if model in table and get(model):
            return get(model)
        have = [m for m in table if get(m)]
        if not have:
            raise ValueError(f"no measured {key or 'rate'} to scale for {model}")
        near = min(have, key=lambda m: abs(math.log(mac(m) / mac(model))))
        scaled.add(f"{model} {what or key} (from {near})")
        return get(near) * mac(near) / mac(model)

    def one_rate(model):  # a trial alone: a measured student's figure, else the teacher's
        if model in student and student[model]["one"]:
            return student[model]["one"]
        if model in teacher and teacher[model]:
            return teacher[model]
        return rate({**{m: s["one"] for m, s in student.items()}, **teacher}, model,
                    what="alone")

    def group_rate(model, s, fused_key):
        r1 = rate(student, model, "one captured" if fused_key == "captured" else "one")
        rk = rate(student, model, fused_key)
        return r1 + (rk - r1) * (s - 1) / (k - 1) if k > 1 else rk

    images = epochs * n
    hours = dict.fromkeys(MODES, 0.0)
    banks = 0.0
    for t in plan.trials:
        parent = by_key.get(t.teacher_key)
        source = None if parent is None else sources[t.teacher_key]
        if source == "private":
            banks += aug.n_views * n / rate(views_per_s, parent.model, what="bank build")
        elif source == "online":  # the teacher's forward per image trained
            banks += images / rate(views_per_s, parent.model, what="bank build")
        if t.key in sources and sources[t.key] == "shared":
            banks += aug.n_views * n / rate(views_per_s, t.model, what="bank build")
        alone = images / one_rate(t.model) / 3600
        if sibling_key(t) is None:  # teachers and trials on the labels run alone throughout
            for mode in MODES:
                hours[mode] += alone
            continue
        hours["one"] += alone
        # K packed trials share the device: each costs its images at the K's summed rate
        hours["packed"] += images / rate(student, t.model, "packed") / 3600
    groups = Counter(sibling_key(t) for t in plan.trials if sibling_key(t) is not None)
    for key, size in groups.items():
        model = key[1]
        jobs = [k] * (size // k) + ([size % k] if size % k else [])
        for mode, fused_key in (("fused", "fused"), ("fused captured", "captured")):
            hours[mode] += sum(images * s / group_rate(model, s, fused_key) for s in jobs) / 3600
    out = {mode: h + banks / 3600 for mode, h in hours.items()}
    return {"device_hours": out, "vs_one": {m: out[m] / out["one"] for m in MODES},
            "bank_hours": banks / 3600, "k": k, "trials": len(plan.trials),
            "scaled_by_macs": sorted(scaled)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("spec")
    p.add_argument("--gpus", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--teacher-hours", type=float, default=1.0, help="one teacher trial's hours")
    p.add_argument("--measured", action="store_true", help="CPU-measured shape ratios")
    p.add_argument("--preempt-per-node-hour", type=float, default=0.05)
    p.add_argument("--replace-hours", type=float, default=0.1)
    p.add_argument("--seeds", type=int, default=5, help="straggler/preemption draws averaged")
    p.add_argument("--students", nargs="+", default=None, metavar="JSON",
                   help="students_per_gpu.py's figures: print the grid's device-hours on one "
                   "GPU per way of running students, instead of simulating")
    p.add_argument("--capture", default="graphs", help="the captured variant's name there")
    p.add_argument("--json", default=None, help="with --students: the figures as JSON")
    args = p.parse_args()
    spec = load_spec(args.spec)
    if args.students:
        measured = [json.loads(Path(f).read_text()) for f in args.students]
        d = device_hours(spec, measured, args.capture)
        print(f"{args.spec}: {d['trials']} trials on one GPU, K = {d['k']}, from "
              f"{', '.join(m['model'] for m in measured)} measured on "
              f"{measured[0]['device']}; scaled by MACs: {', '.join(d['scaled_by_macs'])}")
        print("| students run | device-hours | vs one trial per GPU |")
        print("| --- | --- | --- |")
        for mode in MODES:
            print(f"| {mode} | {d['device_hours'][mode]:.2f} | {d['vs_one'][mode]:.2f}x |")
        print(f"(bank builds: {d['bank_hours']:.2f} h of each)")
        if args.json:
            Path(args.json).write_text(json.dumps(d, indent=1))
        return
    print(
        f"{args.spec}: {len(build_plan(spec).trials)} trials, "
        f"{'measured' if args.measured else 'MACs'} durations, teacher = "
        f"{args.teacher_hours} h, preemptions {args.preempt_per_node_hour}/node-h, "
        f"mean of {args.seeds} draws"
    )
    print(
        "| GPUs | barrier h | dependency, plan order h | dependency, critical path h "
        "| lower bound h | barrier / dependency | dependency / bound | GPU busy (dependency) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for gpus in args.gpus:
        c = compare(spec, gpus, per_node=args.gpus_per_node, teacher_hours=args.teacher_hours,
                    measured=args.measured, rate=args.preempt_per_node_hour,
                    replace=args.replace_hours, seeds=args.seeds)
        b, f, d, lb = c["barrier"], c["plan order"], c["dependency"], c["bound"]
        print(
            f"| {gpus} | {b:.2f} | {f:.2f} | {d:.2f} | {lb:.2f} | {b / d:.2f} | {d / lb:.3f} "
            f"| {c['busy']:.0%} |"
        )


if __name__ == "__main__":
    main()
