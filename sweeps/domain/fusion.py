"""When sibling students train as one fused job (kd_core/fused.py), and how many at once.

Siblings are students with one teacher, seed, label noise and architecture (the recipe is the
sweep's, shared by all): trials that differ only in loss, tau and alpha (``sibling_key``).
``group_limit`` turns ``resources.fuse`` into the most members a fused job takes:

- ``off`` (or 1): every trial its own job, as before fusion.
- a number K: at most K siblings per job.
- ``auto`` (the default): where `kdsweep plan --measure` recorded fused against separate
  student-steps/s for the architecture on this kind of device (``measured``: {K: speedup},
  store/measured.py's record, read by engine.fuse_limit), the smallest K within ``NEAR`` of
  the best speedup, if that speedup is at least ``PAYS``; else no fusion. Without a
  measurement, the rule of the last measurements (benchmarks/RESULTS.md): on a GPU the
  paper's students are launch-bound and 8 fused WRN-16-2 ran 4.45x the steps of 8 one after
  another, so fuse up to 8. On CPUs nothing, until a sweep is measured to gain: the small
  digits CNNs' epochs gain (fusion.py probe: cnn-small 1.5-2.3x at K = 4-9;
  benchmarks/fused_epoch.py: 1.0-2.1x for the demo's epoch), WideResNets and ResNets lose
  (0.54x: their convolutions already fill the cores), and the demo's whole sweep, `fuse: 9`
  against `off` on the loaded 2-core machine, ran 0.57x-1.78x (median 1.23x over four
  rounds: benchmarks/fused_sweep.py, RESULTS.md), not settled; after the fused job's own
  overheads were cut (a fused job of 7 then ran 1.6x its 7 separate jobs), a reduced demo
  sweep at 5 epochs ran 0.61x-1.18x at 7 per job (two rounds, the lower one disturbed) and
  0.99x-1.23x at 4; with cousins fused and groups spread over the free slots (this pass),
  1.23x-1.46x at 7 (four rounds, median 1.33x, load 10-26), the 1.5x target not shown:
  still no CPU rule.
  ``fuse: K``, or a `plan --measure` record, fuses on CPUs.

Cousins fuse too (``fusion_key``): students of one architecture, seed and noise under
different teachers, each member reading its own teacher's logits (kd_core/fused.py), e.g. a
generation-1 group's generation-2 students, one per member, which become ready together when
that group ends. A job's teachers are capped (``teachers_cap``): each teacher's bank (or
private bank) is held by the job, so their bytes together stay within ``train.bank_budget_gb``,
the host memory one trial may give a bank.

The scheduler never holds a ready student back to fill a group: a group is taken from the
students ready together when a job is handed out, which the engine does when a slot is free
(a job handed out earlier would be grouped before its cousins are ready). Its size also
follows the free slots (``group_size``): 7 ready and 2 free slots make 4 + 3, not 7 and an
idle slot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from .plan import Trial

PAYS = 1.1  # a fused job must run this many times the student-steps/s of separate ones
NEAR = 0.95  # a K measured within this fraction of the best speedup counts as as good
CPU_RULE: dict[str, int] = {}  # architecture prefix -> most members, without a measurement,
# on CPUs (was {"cnn-": 9} while only epochs were measured)
GPU_RULE = 8


def sibling_key(trial: Trial) -> tuple | None:
    """What siblings share; None for a trial that never fuses (trained on the labels)."""
    key = fusion_key(trial)
    return None if key is None else (trial.teacher_key, *key)


def fusion_key(trial: Trial) -> tuple | None:
    """What the members of one fused job share: ``sibling_key`` but the teacher (siblings and
    cousins); None for a trial that never fuses."""
    if trial.teacher_key is None or trial.loss == "ce":
        return None
    return (trial.model, trial.seed, trial.noise_kind, trial.noise_rate)


def group_size(ready: int, free: int, limit: int) -> int:
    """How many of ``ready`` fusable students (one fusion_key) one job takes when ``free``
    slots are free (this job's among them): at most ``limit``, and few enough that the ready
    ones spread over the free slots (ceil(ready / free): 7 and 2 free make 4, then 3 on the
    other), so a slot idles only when fewer students than slots are ready."""
    if limit <= 1 or ready <= 1:
        return 1
    return max(1, min(limit, math.ceil(ready / max(1, free))))


def teachers_cap(bank_bytes: int, budget_bytes: float) -> int:
    """The most teachers one fused job reads: their banks (each ``bank_bytes``) together within
    ``budget_bytes`` (train.bank_budget_gb), at least one (a teacher's siblings always fuse)."""
    if bank_bytes <= 0:
        return 1 << 30
    return max(1, int(budget_bytes // bank_bytes))


def group_limit(fuse: str | int, model: str, gpu: bool,
                measured: Mapping[int, float] | None = None) -> int:
    """The most siblings of ``model`` one job trains (1: no fusion). ``measured``: fused /
    separate student-steps/s by K for this architecture and device kind, if measured."""
    if fuse == "off":
        return 1
    if isinstance(fuse, int):
        return fuse
    if measured:
        best = max(measured.values())
        if best < PAYS:
            return 1
        # the smallest K within NEAR of the best: smaller groups spread over more slots (a
        # teacher's 7 siblings as 4 + 3 on two CPUs, not 7 on one) for the same gain per step
        return int(min(k for k, x in measured.items() if x >= NEAR * best))
    if gpu:
        return GPU_RULE
    return next((k for prefix, k in CPU_RULE.items() if model.startswith(prefix)), 1)
