"""Fused siblings: K students trained as one model, each still its own run.

Siblings are students of one architecture and recipe that share a teacher (hence its bank or
its logits) and a seed (hence data order, augmentation views and noisy labels), and differ
only in loss, tau and alpha. Trained separately, each would run the same batches through its
own copy of the network; fused (as HFTA, Wang et al. MLSys 2021), one data pipeline feeds one
model whose every convolution is a grouped convolution over the K members' channels, every
BatchNorm one over their K x C channels (channels never mix, so each member keeps its own
batch statistics and running statistics), and every Linear a loop over the members: one read
of the batch and of the teacher's logits, K students' arithmetic in fewer, larger kernels.

Each member stays a ``Trainer`` (train.py) with its own model, optimizer, LR schedule,
generator and history: the fused model holds no parameters of its own. Its convolutions and
BatchNorms concatenate the members' parameters in the forward pass, so backward hands each
member the gradient of its own loss in its own ``.grad`` (the members' losses are summed, and a
sum passes each one's gradient through untouched), and each member's optimizer steps it as
separate training does: weight decay on conv/linear weights only, momentum, the LR schedule,
all per member; gradient clipping, were the recipe to have it, would clip each member's own
gradients. Running BatchNorm statistics live in the fused model during an epoch and are
written back to the members' buffers after it (``FusedGroup`` does both).

Exactness: in float64 on the CPU a member's trajectory is bit-for-bit that of separate training
(tests/test_fused.py): PyTorch runs a grouped float64 convolution as one ungrouped convolution
per group on a contiguous copy of the group's channels (the same kernel separate training
runs), and every other op is per channel or per member. In float32 the CPU's oneDNN and the
GPU's cuDNN pick other kernels for a grouped convolution, so members match separate training
to rounding only.

The fused step's forward pass and losses run as the members' ``config.step`` says (capture.py:
eager by default; compiled, or CUDA graphs on a GPU); the recipe's ``compile`` (the student's
forward alone) applies to separate training only.

Cousins fuse too: students that share all of the above but the teacher (the same architecture,
seed, noise and recipe under different teachers, e.g. the generation-2 students of one
generation-1 group, one per member). Each member reads its own teacher's logits: per epoch one
gather from each distinct bank (the same permutation and views, since the seed is shared), per
batch each member's own rows, or its own online teacher's forward pass; the data, order and
labels stay one pipeline. A group of K teachers holds K banks' epoch rows (N x classes each on
the device) and whatever the banks hold where they live (sweeps/domain/fusion.py caps how many
teachers one job takes).

A group trains the members at its lowest epoch together; members resumed from later epochs
(a group formed differently after a preemption) wait until the others catch up, so every
fused epoch trains members with identical data order. A member that diverges or is stopped
leaves the group (``drop``); the others go on.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.sgd import sgd

from .bank import TeacherBank
from .capture import capture
from .config import TrainConfig
from .data import draw_views
from .loop import DONE, Checkpoints, Outcome, diverged
from .losses import distillation_loss
from .metrics import EpochMetrics
from .optim import SGD
from .train import Trainer

SIBLING_FREE = ("loss", "tau", "alpha", "loss_params")  # what siblings may differ in
# A fused evaluation's chunk of images on a CPU. Per member, one fused pass of 7 over digits'
# 450 test images (one thread, benchmarks/fused_eval.py) against each member's own dense pass
# at batch 1024: in one chunk of 450 the grouped convolution costs 1.2-1.7x the 7 dense
# passes (its working set outgrowing the cache, likely; not profiled); in chunks of 128,
# 0.80-0.89x (cnn-small) and 0.91-0.94x (cnn-medium). A member's own pass keeps its batch of
# 1024 (smaller chunks cost it more).
EVAL_CHUNK_CPU = 128


def sibling_signature(config: TrainConfig) -> tuple:
    """What siblings share of their recipe: every field but loss, tau, alpha (and the loss's
    parameters)."""
    d = config.to_dict()
    return tuple((k, d[k]) for k in sorted(d) if k not in SIBLING_FREE)


class FusedConv(nn.Module):
    """K members' Conv2d as one grouped convolution; their weights concatenated per call."""

    def __init__(self, convs: Sequence[nn.Conv2d]):
        super().__init__()
        self.convs = list(convs)  # not submodules: the members own them
        c = convs[0]
        self.stride, self.padding, self.dilation = c.stride, c.padding, c.dilation
        self.groups = len(convs) * c.groups

    def forward(self, x):
        w = torch.cat([c.weight for c in self.convs])
        b = None if self.convs[0].bias is None else torch.cat([c.bias for c in self.convs])
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)


class FusedBatchNorm(nn.Module):
    """K members' BatchNorm2d over K x C channels. The running statistics are the fused
    model's during an epoch (``load``, ``store`` move them from and to the members)."""

    def __init__(self, bns: Sequence[nn.BatchNorm2d]):
        super().__init__()
        self.bns = list(bns)
        self.eps, self.momentum = bns[0].eps, bns[0].momentum
        self.running_mean = self.running_var = None
        self.steps = 0

    def load(self) -> None:
        self.running_mean = torch.cat([b.running_mean for b in self.bns])
        self.running_var = torch.cat([b.running_var for b in self.bns])
        self.steps = 0

    @torch.no_grad()
    def store(self) -> None:
        for b, mean, var in zip(self.bns, self.running_mean.chunk(len(self.bns)),
                                self.running_var.chunk(len(self.bns)), strict=True):
            b.running_mean.copy_(mean)
            b.running_var.copy_(var)
            b.num_batches_tracked += self.steps
        self.steps = 0

    def forward(self, x):
        w = torch.cat([b.weight for b in self.bns])
        bias = torch.cat([b.bias for b in self.bns])
        return F.batch_norm(x, self.running_mean, self.running_var, w, bias, self.training,
                            self.momentum, self.eps)


class FusedLinear(nn.Module):
    """K members' Linear, each on its own slice of a (B, K x in) input: a loop (one small
    matmul each), which keeps each member's arithmetic that of separate training."""

    def __init__(self, linears: Sequence[nn.Linear]):
        super().__init__()
        self.linears = list(linears)

    def per_member(self, x) -> list[torch.Tensor]:
        return [F.linear(part.contiguous(), m.weight, m.bias)
                for part, m in zip(x.chunk(len(self.linears), dim=1), self.linears, strict=True)]

    def forward(self, x):
        return torch.cat(self.per_member(x), dim=1)


def _fuse(mods: Sequence[nn.Module]) -> nn.Module:
    m0 = mods[0]
    if isinstance(m0, nn.Conv2d):
        return FusedConv(mods)
    if isinstance(m0, nn.BatchNorm2d):
        if not m0.track_running_stats or m0.momentum is None:
            raise TypeError("fusing needs BatchNorm2d with running statistics and a momentum")
        return FusedBatchNorm(mods)
    if isinstance(m0, nn.Linear):
        return FusedLinear(mods)
    if isinstance(m0, nn.Dropout) and m0.p > 0:
        raise TypeError("cannot fuse dropout (its masks would differ from separate training)")
    if any(True for _ in m0.parameters(recurse=False)) or any(
            True for _ in m0.buffers(recurse=False)):
        raise TypeError(f"cannot fuse {type(m0).__name__}")
    fused = copy.copy(m0)  # a container or a parameter-free layer: fuse its children
    fused._modules = {name: (None if child is None else _fuse([m._modules[name] for m in mods]))
                      for name, child in m0._modules.items()}
    fused._parameters, fused._buffers = {}, {}
    return fused


class FusedModel(nn.Module):
    """K classifiers of one architecture as one forward pass; ``forward`` returns each
    member's logits, (B, classes) each. The members keep their parameters and buffers."""

    def __init__(self, models: Sequence[nn.Module],
                 memory_format: torch.memory_format = torch.contiguous_format):
        super().__init__()
        self.memory_format = memory_format  # the trainer's: channels_last on a GPU
        specs = {repr(getattr(m, "spec", type(m).__name__)) for m in models}
        if len(specs) != 1:
            raise ValueError(f"fused members must share one architecture, got {sorted(specs)}")
        self.k = len(models)
        self.skeleton = _fuse(models)  # its head is FusedLinear; features() is the body's
        self.norms = [m for m in self.skeleton.modules() if isinstance(m, FusedBatchNorm)]

    def load(self) -> None:
        """Take the members' running statistics (before an epoch or an evaluation)."""
        for n in self.norms:
            n.load()

    def store(self) -> None:
        """Give the members back their running statistics (after training)."""
        for n in self.norms:
            n.store()

    def count_step(self) -> None:
        """One training forward done: each BatchNorm's count of batches (added to its members'
        ``num_batches_tracked`` on ``store``). Counted here, outside the forward pass, so that a
        compiled step (capture.py) sees no integer change between steps (Dynamo would
        recompile on each)."""
        for n in self.norms:
            n.steps += 1

    def forward(self, x) -> list[torch.Tensor]:
        x = x.repeat(1, self.k, 1, 1).contiguous(memory_format=self.memory_format)
        feats = self.skeleton.features(x)
        return self.skeleton.head.per_member(feats)


def step_members(optimizers: Sequence[SGD]) -> None:
    """Each member's ``optimizer.step()``, as one multi-tensor SGD step over all members'
    parameters (per bucket of equal hyperparameters: siblings share their recipe, so at one
    epoch their weight-decayed groups form one bucket and the rest another). The same
    elementwise operations, in the same order per tensor, as each member's own step (weight
    decay added to the gradient, momentum, the update with the member's own lr), so a member's
    weights and momentum buffers are bit-for-bit those of its own step; on the CPU the members'
    K x 2 single-tensor steps (a Python loop over every tensor) become one or two foreach calls;
    where the members' groups say ``fused`` (a GPU), one fused kernel over all members."""
    buckets: dict[tuple, tuple[list, list, list, list]] = {}
    for o in optimizers:
        for g in o.param_groups:
            key = (g["weight_decay"], g["momentum"], g["lr"], g["dampening"], g["nesterov"],
                   g["maximize"], bool(g["fused"]), g["differentiable"])
            if key[-1]:
                raise ValueError("a fused group steps no differentiable optimizer")
            params, grads, bufs, owners = buckets.setdefault(key, ([], [], [], []))
            for p in g["params"]:
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise ValueError("a fused group steps no sparse gradient")
                    params.append(p)
                    grads.append(p.grad)
                    bufs.append(o.state[p].get("momentum_buffer") if g["momentum"] else None)
                    owners.append(o)
    with torch.no_grad():
        for (wd, momentum, lr, dampening, nesterov, maximize, fused, _), (
                params, grads, bufs, owners) in buckets.items():
            sgd(params, grads, bufs, foreach=not fused, fused=fused or None, weight_decay=wd,
                momentum=momentum, lr=lr, dampening=dampening, nesterov=nesterov,
                maximize=maximize)
            if momentum:
                for p, buf, o in zip(params, bufs, owners, strict=True):
                    o.state[p]["momentum_buffer"] = buf


def teachers(group: Sequence[Trainer]) -> tuple[list, list[int], list[int]]:
    """The members' teachers, each once (cousins: one per member; siblings: one), which of
    them each member reads, and which of them are banks (each bank gathers an epoch's rows
    once; each online teacher runs once per batch)."""
    sources: list = []
    for t in group:
        if not any(t.teacher is s for s in sources):
            sources.append(t.teacher)
    which = [next(j for j, s in enumerate(sources) if s is t.teacher) for t in group]
    banks = [j for j, s in enumerate(sources) if isinstance(s, TeacherBank)]
    return sources, which, banks


class FusedGroup:
    """Sibling (or cousin) trainers (``Trainer``), each resumed or fresh, trained as one
    fused model; each member reads its own teacher's logits (a bank, or the teacher online).

    ``epochs()`` trains every member to its last epoch, yielding ``(member, metrics)`` for each
    member after each epoch it trains (``epoch_done`` is true at the fused epoch's last
    member's); ``drop(member)`` (a member diverged, stopped early, or
    ended) takes it out of the group from the next epoch on."""

    def __init__(self, members: Sequence[Trainer]):
        if not members:
            raise ValueError("a fused group needs at least one member")
        lead = members[0]
        for t in members[1:]:
            if sibling_signature(t.config) != sibling_signature(lead.config):
                diff = sorted(k for k, v in t.config.to_dict().items()
                              if v != lead.config.to_dict()[k] and k not in SIBLING_FREE)
                raise ValueError(f"not siblings: their recipes differ in {diff}")
            if t.model.spec != lead.model.spec:
                raise ValueError(f"not siblings: {t.model.spec} != {lead.model.spec}")
            if t.data is not lead.data:
                raise ValueError("not siblings: fused members must share one ImageData")
        for t in members[1:]:  # one copy of the data on the device, not one per member
            for name in ("x_train", "y_train", "y_clean", "x_test", "y_test", "x_val", "y_val"):
                setattr(t, name, getattr(lead, name))
        self.members = list(members)
        self.active = list(members)
        self._steps: dict[tuple, tuple[FusedModel, Callable]] = {}  # the current group's
        self.epoch_done = False  # at a yield of epochs(): the fused epoch's last member's

    def drop(self, member: Trainer) -> None:
        if member in self.active:
            self.active.remove(member)

    def _next_group(self) -> list[Trainer]:
        """The members at the lowest epoch whose generator is where the first one's is."""
        left = [t for t in self.active if t.epoch < t.config.epochs]
        if not left:
            return []
        low = min(t.epoch for t in left)
        at = [t for t in left if t.epoch == low]
        state = at[0].generator.get_state()
        return [t for t in at if torch.equal(t.generator.get_state(), state)]

    def epochs(self) -> Iterator[tuple[Trainer, EpochMetrics]]:
        while group := self._next_group():
            t0 = time.perf_counter()
            lrs = [t.optimizer.param_groups[0]["lr"] for t in group]
            sums, logits = self._train_epoch(group)
            train_time = time.perf_counter() - t0
            for i, t in enumerate(group):
                own = logits[i] if logits is not None else None
                metrics = t.end_epoch(sums[i], lrs[i], t0, train_time, own)
                self.epoch_done = i == len(group) - 1
                yield t, metrics

    def time_steps(self, steps: int, warmup: int = 2) -> float:
        """Seconds per fused training step of the active members (after ``warmup`` untimed
        steps), as ``Trainer.time_steps``: trains the weights, counts no epoch; for deciding
        whether fusion pays (`kdsweep plan --measure`), not for a run."""
        self._train_epoch(self.active, warmup)
        t0 = time.perf_counter()
        self._train_epoch(self.active, steps)  # its sums' .tolist() waits for the device
        return (time.perf_counter() - t0) / steps

    def _train_epoch(self, group: list[Trainer], max_steps: int | None = None
                     ) -> tuple[list[list[float]], list[Callable] | None]:
        """One epoch of ``group`` fused (its first ``max_steps`` batches, if given): each
        member's sums, and (when its next epoch evaluates) a function from a split's
        images to its logits from one fused pass."""
        lead = group[0]
        aug, dev = lead.data.augment, lead.device
        fused, step_loss = self._fused(group)
        n = len(lead.y_train)
        perm = torch.randperm(n, generator=lead.generator, device=dev)
        views = draw_views(aug, n, lead.generator, dev) if aug.enabled else None
        for t in group[1:]:  # the same draws, so the same generator state, as separate runs
            t.generator.set_state(lead.generator.get_state())
        # each bank gathers the epoch's rows once (the step reads each member's own)
        sources, _, banks = teachers(group)
        rows = [sources[j].epoch(perm, views, dev) for j in banks]
        z_epoch = (None if not rows else rows[0] if len(rows) == 1 else torch.stack(rows, 1))
        sums = torch.zeros(len(group), 5, device=dev)
        for t in group:
            t.model.train()
        fused.train()
        fused.load()
        stop = n if max_steps is None else min(n, max_steps * lead.config.batch_size)
        optimizers = [t.optimizer for t in group]
        params = [p for o in optimizers for g in o.param_groups for p in g["params"]]
        for idx, x, y, z_bank in lead.batches(perm, views, z_epoch, stop):
            total, losses, zs, z_of = step_loss(x, y, z_bank)
            for p in params:  # every member's zero_grad(set_to_none=True)
                p.grad = None
            total.backward()  # a sum: each member gets exactly its own loss's gradient
            fused.count_step()
            step_members(optimizers)
            y_clean = lead.y_clean[idx]
            for i, (t, z, z_t, loss) in enumerate(zip(group, zs, z_of, losses, strict=True)):
                sums[i] += t.batch_sums(loss, z, z_t, y, y_clean)
        fused.store()
        out = sums.tolist()  # the epoch's one host sync
        # The members' next epoch numbers are all lead.epoch + 1: due for all or none.
        lead.epoch += 1
        due = lead.eval_due()
        lead.epoch -= 1
        # One fused pass per split for all members (on a CPU in chunks of EVAL_CHUNK_CPU).
        return out, (self._eval(fused, group) if due else None)

    def _fused(self, group: list[Trainer]) -> tuple[FusedModel, Callable]:
        """The fused model of ``group`` and its step's loss as the lead's ``config.step`` runs
        it (capture.py), kept per group (a compiled step is compiled once, not per epoch)."""
        at = tuple(id(t) for t in group)
        if at not in self._steps:
            lead = group[0]
            fused = FusedModel([t.model for t in group], lead.memory_format)

            sources, which, banks = teachers(group)

            def step_loss(x, y, z_bank):
                with torch.autocast(lead.device.type, torch.bfloat16, enabled=lead.autocast):
                    z_ts = []
                    for j, source in enumerate(sources):
                        if j in banks:  # its own rows (contiguous, as separate training reads)
                            z = (z_bank if len(banks) == 1
                                 else z_bank[:, banks.index(j)].contiguous())
                            z_ts.append(z.float())
                        else:
                            z_ts.append(None if source is None else source(x))
                    zs = fused(x)
                z_of = [z_ts[j] for j in which]
                losses = [distillation_loss(z, z_t, y, loss=t.config.loss, tau=t.config.tau,
                                            alpha=t.config.alpha, **dict(t.config.loss_params))
                          for z, z_t, t in zip(zs, z_of, group, strict=True)]
                return sum(losses), losses, zs, z_of

            self._steps = {at: (fused, capture(step_loss, lead.execution.step))}
        return self._steps[at]

    def _eval(self, fused: FusedModel, group: list[Trainer]) -> list[Callable]:
        """Per member, a function from a split's images (its test or validation images) to its
        logits, from one fused pass per split (in chunks: EVAL_CHUNK_CPU on a CPU)."""
        lead, dev = group[0], group[0].device
        chunk = 1024 if dev.type == "cuda" else EVAL_CHUNK_CPU
        cache: dict[str, list[torch.Tensor]] = {}

        def split(name: str) -> list[torch.Tensor]:
            if name not in cache:
                images = lead.x_test if name == "test" else lead.x_val
                fused.load()  # the running statistics just stored
                fused.eval()
                outs = []
                with torch.no_grad(), torch.autocast(dev.type, torch.bfloat16,
                                                     enabled=lead.autocast):
                    for i in range(0, len(images), chunk):
                        outs.append([z.float() for z in fused(lead.prepare(images[i:i + chunk]))])
                cache[name] = [torch.cat(col) for col in zip(*outs, strict=True)]
            return cache[name]

        return [lambda images, t=t, i=i: split("test" if images is t.x_test else "val")[i]
                for i, t in enumerate(group)]


def fit_group(
    group: FusedGroup,
    checkpoints: Mapping[Trainer, Checkpoints],
    every: int = 1,
    publish: Callable[[Trainer, Outcome], dict] = lambda member, outcome: {},
    after_epoch: Callable[[Trainer, int], None] = lambda member, epoch: None,
) -> Iterator[tuple[Trainer, EpochMetrics, dict]]:
    """``loop.fit`` for a fused group: each member's epochs go to its own ``checkpoints``
    first, then (on its last epoch, or a divergence) its outcome is published, and only then
    is the epoch yielded, as ``(member, metrics, published)``. A diverged member is published
    as such and leaves the group; the others go on. The caller may ``group.drop`` a member
    (stopped early) between yields."""
    for t, m in group.epochs():
        last = t.epoch == t.config.epochs
        if last or t.epoch % every == 0:
            checkpoints[t].save(t.state_dict(), background=not last)
        else:
            checkpoints[t].remember(t.state_dict())
        after_epoch(t, t.epoch)
        if reason := diverged(m.as_dict()):
            group.drop(t)
            yield t, m, publish(t, Outcome("diverged", f"epoch {t.epoch}: {reason}"))
            continue
        yield t, m, publish(t, DONE) if last else {}
