"""Peak memory and speed of a few training steps: what packing trials onto devices needs.

Peak memory is reached within the first steps (the optimizer's buffers appear at step one), so a
short run measures what a whole trial will hold. Measure in a fresh process: on the CPU the
figure is the process's peak resident set, which only grows.
"""

from __future__ import annotations

import math
import os
import resource
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .bank import TeacherBank
from .data import ImageData
from .run import RunSpec, build_trainer, load_run_data
from .train import init_model, resolve_device

GiB = 2**30


@dataclass(frozen=True)
class Shape:
    """A kind of trial to profile: an architecture, and how it gets teacher logits."""

    model: str
    teacher: str | None = None  # the teacher's architecture; None: trained on labels
    logit_source: str | None = None  # how a student gets teacher logits: bank.logit_source

    @property
    def label(self) -> str:
        return "on labels" if self.teacher is None else f"from {self.teacher} ({self.logit_source})"


@dataclass(frozen=True)
class MemoryProfile:
    device: str  # "cpu" or the GPU's name
    device_total: int  # bytes of memory on that device (host memory for the CPU)
    peak: int  # CUDA: the caching allocator's peak reserved bytes; CPU: the process's peak RSS
    context: int  # CUDA: what the process holds outside the allocator (context, kernels); CPU: 0
    host_peak: int  # the process's peak RSS, either way
    step_seconds: float
    eval_seconds: float  # one pass over the test split
    steps_per_epoch: int
    logit_source: str | None

    @property
    def footprint(self) -> int:
        """What one trial needs on its device."""
        return self.peak + self.context

    @property
    def epoch_seconds(self) -> float:
        return self.steps_per_epoch * self.step_seconds + self.eval_seconds

    def to_dict(self) -> dict:
        return asdict(self)


def _peak_rss() -> int:
    """This process's own peak resident set.

    VmHWM, not ru_maxrss: Linux carries a forked parent's ru_maxrss into its exec'd child, so a
    profile started from a big process (a pytest run, a Ray worker) would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _stand_in_bank(data, dtype: torch.dtype, file: Path | None = None) -> TeacherBank:
    """A bank of the real shape and dtype, in host memory as a real one; its values do not
    change what memory it takes. Filled (not just allocated) so that the resident set counts
    its pages; with ``file``, mapped from that file instead, as a shared bank is (the node
    cache), so that its pages are told apart (_mapped_rss)."""
    n, views, k = len(data.train_labels), data.augment.n_views, data.num_classes
    if file is None:
        logits = torch.empty(n, views, k, dtype=dtype).normal_()
    else:
        with open(file, "wb") as f:
            f.truncate(n * views * k * dtype.itemsize)
        logits = torch.from_file(str(file), shared=True, size=n * views * k, dtype=dtype)
        logits = logits.view(n, views, k)
    test = torch.zeros(len(data.test_labels), k)
    return TeacherBank(logits, test, data.augment)


def _mapped_rss(path: Path) -> int:
    """Bytes of this process's mappings of ``path`` that are resident (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if line[0] in "0123456789abcdef":  # a mapping's header: address range, ..., path
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024  # kB
    return total


def profile_run(
    run: RunSpec,
    teacher_model: str | None = None,
    logit_source: str | None = None,
    steps: int = 10,
    data: ImageData | None = None,
) -> MemoryProfile:
    """Build the run's trainer and time ``steps`` steps, measuring peak memory.

    Students pass their teacher's architecture and ``logit_source`` (kd_core.bank.logit_source's
    names): "online" (the teacher runs every step), "private" (its logits are gathered from a
    bank in the trial's own host memory) or "shared" (from a bank mapped from a file, whose
    pages a node's trials share: they are left out of the host peak, since the node holds them
    once, in its page cache). Weights are random: neither memory nor speed depends on them.
    ``data`` replaces the run's dataset.
    """
    if run.train.loss != "ce" and logit_source not in ("online", "private", "shared"):
        raise ValueError(
            f"a {run.train.loss} student needs logit_source online, private or shared"
        )
    device = resolve_device(run.train.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats(device)
    run_data = load_run_data(run) if data is None else (data, None)
    data = run_data[0]
    teacher = bank = mapped = None
    dtype = getattr(torch, run.train.bank_dtype)
    with tempfile.TemporaryDirectory(prefix="kdprofile-") as tmp:
        if logit_source == "shared":
            mapped = Path(tmp) / "bank"
        if logit_source in ("private", "shared"):
            bank = _stand_in_bank(data, dtype, mapped)
        elif logit_source == "online":
            teacher = init_model(teacher_model, data, run.train.seed)
        trainer, _ = build_trainer(run, teacher, run_data, bank)
        step_s, eval_s = trainer.time_steps(steps)
        host_peak = _peak_rss() - (_mapped_rss(mapped) if mapped else 0)
    if cuda:
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_reserved(device)
        free, total = torch.cuda.mem_get_info(device)
        # Everything in use on the GPU that the allocator does not hold: this process's CUDA
        # context and kernels (and any other process's memory: measure on an idle GPU).
        context = max(0, total - free - torch.cuda.memory_reserved(device))
        name = torch.cuda.get_device_name(device)
    else:
        peak, context, total, name = host_peak, 0, _host_memory(), "cpu"
    return MemoryProfile(
        device=name,
        device_total=total,
        peak=peak,
        context=context,
        host_peak=host_peak,
        step_seconds=step_s,
        eval_seconds=eval_s,
        steps_per_epoch=trainer.steps_per_epoch(),
        # as asked (a private bank is handed to the trainer like a shared one); None on labels
        logit_source=logit_source if trainer.logit_source else None,
    )


# The settings of a measured group of K siblings (the first K, cycled): what differs between
# siblings (loss, tau, alpha) costs the same whatever its value, save mse against kl.
FUSION_SETTINGS = (("kl", 4.0, 1.0), ("mse", 1.0, 1.0), ("kl", math.inf, 1.0), ("kl", 20.0, 1.0),
                   ("kl", 0.5, 1.0), ("kl", 4.0, 0.9), ("kl", 20.0, 0.9), ("kl", 1.0, 1.0))


@dataclass(frozen=True)
class FusionProfile:
    """K sibling students fused (kd_core/fused.py) against the same students trained one after
    another, on one device: student-steps per second each way (median over rounds), and the
    fused job's footprint on the device."""

    device: str  # "cpu" or the GPU's name
    k: int
    separate: float  # student-steps/s of one student at a time
    fused: float  # student-steps/s of the K as one fused job (K x its steps/s)
    footprint: int  # bytes: CUDA, the allocator's peak reserved plus the context; CPU, peak RSS

    @property
    def speedup(self) -> float:
        return self.fused / self.separate

    def to_dict(self) -> dict:
        return {**asdict(self), "speedup": self.speedup}


def profile_fusion(
    run: RunSpec,
    teacher_model: str,
    logit_source: str,
    ks: list[int],
    steps: int = 10,
    rounds: int = 2,
) -> list[FusionProfile]:
    """Student-steps/s of ``run``'s architecture trained alone and as fused groups of each K in
    ``ks`` (siblings of a stand-in teacher: a bank of random logits, or an untrained
    ``teacher_model`` online), ``steps`` timed steps after warm-up, the modes interleaved over
    ``rounds`` (rotated), medians. The footprint of K is measured after the smaller Ks ran
    (the CPU's peak resident set only grows): an upper bound there, exact on a GPU."""
    import dataclasses
    import statistics

    from .fused import FusedGroup

    device = resolve_device(run.train.device)
    cuda = device.type == "cuda"
    run_data = load_run_data(run)
    data = run_data[0]
    teacher = bank = None
    if logit_source in ("private", "shared"):
        bank = _stand_in_bank(data, getattr(torch, run.train.bank_dtype))
    else:
        teacher = init_model(teacher_model, data, run.train.seed)

    def trainer(i: int):
        loss, tau, alpha = FUSION_SETTINGS[i % len(FUSION_SETTINGS)]
        cfg = dataclasses.replace(run.train, loss=loss, tau=tau, alpha=alpha, epochs=1000)
        return build_trainer(dataclasses.replace(run, train=cfg), teacher, run_data, bank)[0]

    alone = trainer(0)
    groups = {k: FusedGroup([trainer(i) for i in range(k)]) for k in sorted(ks)}
    rates: dict = {k: [] for k in ["separate", *groups]}
    footprint: dict[int, int] = {}
    order = ["separate", *groups]
    for r in range(rounds):
        for mode in order[r % len(order):] + order[:r % len(order)]:
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            if mode == "separate":
                rates[mode].append(1 / alone.time_steps(steps)[0])
                continue
            rates[mode].append(mode / groups[mode].time_steps(steps))
            if cuda:
                free, total = torch.cuda.mem_get_info(device)
                context = max(0, total - free - torch.cuda.memory_reserved(device))
                peak = torch.cuda.max_memory_reserved(device) + context
            else:
                peak = _peak_rss()
            footprint[mode] = max(footprint.get(mode, 0), peak)
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    separate = statistics.median(rates["separate"])
    return [FusionProfile(name, k, separate, statistics.median(rates[k]), footprint[k])
            for k in groups]


def forward_macs(name: str, num_classes: int, image_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass of model ``name`` on one image (convolutions and
    linear layers): the model built on the meta device and given uninitialised CPU storage, run
    on a batch of no images (nothing is computed; the layers' output shapes give the count).
    Not run on the meta device itself: torch decomposes ops there through torch._dynamo, whose
    import costs a second of every driver's start (nor given its storage by ``to_empty``:
    models.base.to_cpu_storage)."""
    from torch import nn

    from .models import build_model
    from .models.base import to_cpu_storage

    with torch.device("meta"):
        model = build_model(name, num_classes, image_shape[0]).eval()
    to_cpu_storage(model)
    total = 0

    def count(m, _inputs, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total += math.prod(out.shape[1:]) * (m.in_channels // m.groups) * kh * kw
        else:
            total += m.in_features * m.out_features

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(count) for m in layers]
    with torch.no_grad():
        model(torch.empty(0, *image_shape))
    for h in handles:
        h.remove()
    return total
