"""Fused-siblings probe: K students of one architecture, trained (1) one after another,
(2) fused into one model, (3) as K processes packed on one device. Evidence for or against
building fused trials, not the feature.

Siblings are the students of one teacher that differ only in loss and tau (same seed, so the
same batches): the paper grid's sibling group is 9 (kl at 0.1, 0.25, 0.5, 1, 3, 5, 20, inf,
and mse); a group of K < 9 takes the first K of SIBLINGS. Fused, their parameters are
stacked: every Conv2d becomes one grouped convolution (groups x K),
every BatchNorm2d one over K x C channels (per-student statistics, since channels never mix),
every Linear one batched matmul; the input batch is read once and repeated over the K channel
groups; the teacher's logits (a bank row) are read once; each student keeps its own loss and
tau, and the sum of the K losses gives each student exactly its own gradient. SGD (momentum,
Nesterov, weight decay on conv/linear weights) is elementwise, so one optimizer over the fused
parameters steps each student as its own would.

Counted: student-steps per second (K x steps / wall time) after warm-up steps, modes
interleaved (rotated every round, harness.py), min and median over rounds; and the largest
parameter difference between fused and one-after-another training after the timed steps
(equivalent up to summation order, not bit-identical). On CUDA both fused and separate runs
use bf16 autocast and channels_last, as kd_core's Trainer does. Augmentation is left out (the
same in every mode, and shared by siblings).

    PYTHONPATH=. .venv/bin/python benchmarks/fusion.py --model cnn-small --ks 1,2,4,8,9
    PYTHONPATH=. .venv/bin/python benchmarks/fusion.py --model wrn-16-2 --ks 1,2,4,8,9 \
        --steps 2 --rounds 2
    PYTHONPATH=. .venv/bin/python benchmarks/fusion.py --device cuda --model wrn-16-2 \
        --ks 1,2,4,8,9 --steps 20 --rounds 3 --packed
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import fmt, min_med, packed_seconds, rotations, timed  # noqa: E402

from kd_core.losses import distillation_loss  # noqa: E402
from kd_core.models import build_model  # noqa: E402

# The paper grid's siblings of one teacher (sweeps/configs/cifar100-paper.yaml): kl at its
# eight taus, and mse (tau unused); the first K of them for a group of K.
SIBLINGS = [("kl", 5.0), ("kl", 1.0), ("mse", 1.0), ("kl", 20.0), ("kl", 0.5), ("kl", 3.0),
            ("kl", 0.25), ("kl", 0.1), ("kl", float("inf"))]
SHAPES = {"cnn": (1, 8, 10), "wrn": (3, 32, 100), "resnet": (3, 32, 100)}  # C, H=W, classes


def siblings(k: int) -> list[tuple[str, float]]:
    """The (loss, tau) of a group of K siblings (past 9, the list again)."""
    return [SIBLINGS[i % len(SIBLINGS)] for i in range(k)]


class BatchedLinear(nn.Module):
    """K Linear layers applied to their own slice of a (B, K*in) input: one batched matmul."""

    def __init__(self, layers: list[nn.Linear]):
        super().__init__()
        self.k = len(layers)
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]))  # K,out,in
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in layers]))  # K,out

    def forward(self, x):
        b = x.shape[0]
        x = x.reshape(b, self.k, -1).transpose(0, 1)  # K, B, in
        y = torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))
        return y.transpose(0, 1).reshape(b, -1)  # B, K*out, student-major


def _fuse_module(mods: list[nn.Module]) -> nn.Module:
    m0, k = mods[0], len(mods)
    if isinstance(m0, nn.Conv2d):
        f = nn.Conv2d(k * m0.in_channels, k * m0.out_channels, m0.kernel_size, m0.stride,
                      m0.padding, m0.dilation, k * m0.groups, m0.bias is not None)
        f.weight = nn.Parameter(torch.cat([m.weight.detach() for m in mods]))
        if m0.bias is not None:
            f.bias = nn.Parameter(torch.cat([m.bias.detach() for m in mods]))
        return f
    if isinstance(m0, nn.BatchNorm2d):
        f = nn.BatchNorm2d(k * m0.num_features, m0.eps, m0.momentum)
        for name in ("weight", "bias"):
            setattr(f, name, nn.Parameter(torch.cat([getattr(m, name).detach() for m in mods])))
        for name in ("running_mean", "running_var"):
            getattr(f, name).copy_(torch.cat([getattr(m, name) for m in mods]))
        return f
    if isinstance(m0, nn.Linear):
        return BatchedLinear(mods)
    if any(True for _ in m0.parameters(recurse=False)):
        raise TypeError(f"cannot fuse {type(m0).__name__}")
    fused = copy.copy(m0)  # a container or a parameter-free layer: fuse its children
    fused._modules = {name: (None if child is None else _fuse_module(
        [m._modules[name] for m in mods])) for name, child in m0._modules.items()}
    return fused


class Fused(nn.Module):
    """K models of one architecture as one: logits (B, K, classes)."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.k = len(models)
        self.net = _fuse_module(models)

    def forward(self, x):
        z = self.net(x.repeat(1, self.k, 1, 1))  # each student's channel group sees the batch
        return z.reshape(x.shape[0], self.k, -1)


def unfuse(fused: Fused, like: nn.Module) -> list[dict[str, torch.Tensor]]:
    """Each student's parameters back out of the fused model, keyed like ``like``'s."""
    out = [{} for _ in range(fused.k)]
    for (name, p), (_, q) in zip(like.named_parameters(), fused.net.named_parameters(),
                                 strict=True):
        for i, chunk in enumerate(q.detach().reshape(fused.k, *p.shape)):
            out[i][name] = chunk
    return out


@torch.no_grad()
def param_diff(fused: Fused, separate: list[nn.Module]) -> float:
    """The largest difference between a fused student's parameters and its separate twin's."""
    return max(float((mine[name] - p).abs().max())
               for mine, m in zip(unfuse(fused, separate[0]), separate, strict=True)
               for name, p in m.named_parameters())


def optimizer(model: nn.Module, cuda: bool) -> torch.optim.Optimizer:
    """kd_core's SGD: weight decay on conv and linear weights only (its ndim > 1 rule, which a
    BatchedLinear's 2-D bias would break, so taken by module here)."""
    decay = [m.weight for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear, BatchedLinear))]
    rest = [p for p in model.parameters() if all(p is not q for q in decay)]
    return torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": rest}], lr=0.05,
                           momentum=0.9, nesterov=True, fused=cuda or None)


class Batches:
    """The same (x, y, teacher logits) stream for every mode: fixed by the step number."""

    def __init__(self, model: str, batch: int, device: torch.device, n: int = 4):
        c, hw, classes = SHAPES[model.split("-")[0]]
        g = torch.Generator().manual_seed(0)
        fmt_ = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        self.items = [(torch.randn(batch, c, hw, hw, generator=g).to(device, memory_format=fmt_),
                       torch.randint(0, classes, (batch,), generator=g).to(device),
                       (3 * torch.randn(batch, classes, generator=g)).to(device))
                      for _ in range(n)]
        self.classes = classes

    def __getitem__(self, step):
        return self.items[step % len(self.items)]


def students(model: str, k: int, classes: int, in_channels: int, device) -> list[nn.Module]:
    torch.manual_seed(0)
    fmt_ = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    return [build_model(model, classes, in_channels).to(device, memory_format=fmt_).train()
            for _ in range(k)]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_separate(models, opts, batches, steps, start, device, settings):
    """Each student its own forward/backward/step on the same batch, one after another."""
    for s in range(start, start + steps):
        x, y, z_t = batches[s]
        for m, opt, (loss, tau) in zip(models, opts, settings, strict=False):
            with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                z = m(x)
            distillation_loss(z, z_t, y, loss=loss, tau=tau).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)


def run_fused(fused, opt, batches, steps, start, device, settings):
    for s in range(start, start + steps):
        x, y, z_t = batches[s]
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            z = fused(x)
        total = sum(distillation_loss(z[:, i], z_t, y, loss=loss, tau=tau)
                    for i, (loss, tau) in enumerate(settings))
        total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


WORKER = r"""
import sys, time, os, torch
sys.path.insert(0, sys.argv[1])
import fusion
model, batch, steps, warmup, go, device, threads = sys.argv[2:9]
device = torch.device(device); torch.set_num_threads(int(threads))
b = fusion.Batches(model, int(batch), device)
(m,) = fusion.students(model, 1, b.classes, b.items[0][0].shape[1], device)
opt = fusion.optimizer(m, device.type == "cuda")
fusion.run_separate([m], [opt], b, int(warmup), 0, device, [("kl", 4.0)])
fusion.sync(device)
print("ready", flush=True)
while not os.path.exists(go): time.sleep(0.001)
fusion.run_separate([m], [opt], b, int(steps), int(warmup), device, [("kl", 4.0)])
fusion.sync(device)
print("done", flush=True)
"""


def run_packed(args, k: int, device) -> float:
    """K processes, one student each, on the same device: wall time from a common start
    (after each has warmed up) to the last one's end."""
    go = Path(tempfile.mkdtemp()) / "go"
    threads = max(1, (os.cpu_count() or 1) // k) if device.type == "cpu" else 1
    cmd = [sys.executable, "-c", WORKER, str(Path(__file__).parent), args.model,
           str(args.batch), str(args.steps), str(args.warmup), str(go), device.type, str(threads)]
    return packed_seconds(cmd, k, go)


def probe(args, k: int, device) -> dict:
    batches = Batches(args.model, args.batch, device)
    c = batches.items[0][0].shape[1]
    settings = siblings(k)
    cuda = device.type == "cuda"
    # identical starting points: the separate students and the fused copy of them
    separate = students(args.model, k, batches.classes, c, device)
    fused = Fused(copy.deepcopy(separate)).to(device)
    if cuda:
        fused = fused.to(memory_format=torch.channels_last)
    opts = [optimizer(m, cuda) for m in separate]
    fopt = optimizer(fused, cuda)
    # warm-up (allocator, cuDNN autotuning), the same steps on both sides
    run_separate(separate, opts, batches, args.warmup, 0, device, settings)
    run_fused(fused, fopt, batches, args.warmup, 0, device, settings)
    early = param_diff(fused, separate)
    step = {"start": args.warmup}

    def sep():
        t = timed(lambda: run_separate(separate, opts, batches, args.steps, step["start"],
                                       device, settings), lambda: sync(device))
        return k * args.steps / t

    def fus():
        t = timed(lambda: run_fused(fused, fopt, batches, args.steps, step["start"], device,
                                    settings), lambda: sync(device))
        return k * args.steps / t

    variants = {"separate": sep, "fused": fus}
    packed_ks = args.ks if args.packed_ks is None else args.packed_ks
    if args.packed and str(k) in packed_ks.split(","):
        variants["packed"] = lambda: k * args.steps / run_packed(args, k, device)
    # Each round, every mode once in rotated order; the separate and fused students take the
    # same steps, so their parameters stay comparable.
    out = {name: [] for name in variants}
    for order in rotations(list(variants), args.rounds):
        for name in order:
            out[name].append(variants[name]())
        step["start"] += args.steps
    with torch.no_grad():
        scale = max(float(p.abs().max()) for m in separate for p in m.parameters())
    return {"k": k, **out, "diff_after_warmup": early,
            "max_param_diff": param_diff(fused, separate), "max_param": scale,
            "steps_compared": args.warmup + args.rounds * args.steps}


def exactness(model: str, k: int, steps: int = 5) -> float:
    """Fused vs separate in float64 on the CPU (batch 16): what is left is rounding (~1e-16),
    so a larger difference is a fusion bug, not summation order. In fp32 the two drift apart
    by ~1e-7 per step, which training dynamics can amplify (tau = inf, early WRN steps)."""
    torch.set_default_dtype(torch.float64)
    try:
        cpu = torch.device("cpu")
        batches = Batches(model, 16, cpu)
        separate = students(model, k, batches.classes, batches.items[0][0].shape[1], cpu)
        fused = Fused(copy.deepcopy(separate))
        settings = siblings(k)
        run_separate(separate, [optimizer(m, False) for m in separate], batches, steps, 0, cpu,
                     settings)
        run_fused(fused, optimizer(fused, False), batches, steps, 0, cpu, settings)
        return param_diff(fused, separate)
    finally:
        torch.set_default_dtype(torch.float32)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="cnn-small")
    p.add_argument("--batch", type=int, default=None, help="default: 64 (cnn), 128 (others)")
    p.add_argument("--ks", default="1,2,4,8,9")
    p.add_argument("--steps", type=int, default=10, help="timed steps per mode per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument("--packed", action="store_true", help="also K processes on one device")
    p.add_argument("--packed-ks", default=None, help="K values to pack (default: all of --ks)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    args.batch = args.batch or (64 if args.model.startswith("cnn") else 128)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
    rows = [probe(args, int(k), device) for k in args.ks.split(",")]
    k_max = max(r["k"] for r in rows)
    exact = exactness(args.model, k_max)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{os.cpu_count()}"
    print(f"{args.model}, batch {args.batch}, {name}, torch {torch.__version__}; "
          f"student-steps/s min / median over {args.rounds} rounds of {args.steps} steps")
    modes = [m for m in ("separate", "fused", "packed") if any(m in r for r in rows)]
    print("| K | " + " | ".join(modes) + " | fused / separate (median) | max param diff after "
          f"{args.warmup} steps / after all |")
    print("| --- " * (len(modes) + 3) + "|")
    for r in rows:
        speed = min_med(r["fused"])[1] / min_med(r["separate"])[1]
        print(f"| {r['k']} | " + " | ".join(fmt(r[m], 1) if m in r else "-" for m in modes) +
              f" | {speed:.2f}x | {r['diff_after_warmup']:.1e} / {r['max_param_diff']:.1e} "
              f"({r['steps_compared']} steps; params up to {r['max_param']:.1f}) |")
        # Bound: K students fused do K students' arithmetic; a fused step can save launches
        # and reads, not FLOPs. On a CPU whose cores the separate run already fills, fused
        # beyond K x separate is impossible.
        if speed > r["k"] * 1.05:
            print(f"BOUND CROSSED: fused/separate {speed:.2f} > K = {r['k']}: a measuring error")
    print(f"equivalence, float64 on the CPU, K = {k_max}, 5 steps: max param diff {exact:.1e}")
    if exact > 1e-10:
        print(f"NOT EQUIVALENT: {exact:.1e} is beyond float64 rounding: the fusion is wrong")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows,
                                               "float64_diff": exact}, indent=1))


if __name__ == "__main__":
    main()
