"""The recipe's optimizer and LR schedule: SGD with (Nesterov) momentum, the learning rate cut by
``gamma`` at each milestone epoch.

torch's own arithmetic, without torch.optim's classes: ``SGD.step`` calls the functional step
that ``torch.optim.SGD.step`` calls (``torch.optim.sgd.sgd``, same arguments), and
``MilestoneLR`` cuts the rate exactly as ``MultiStepLR`` does (the group's current rate times
gamma at a milestone), so weights, momentum and rates are bit-for-bit torch's
(tests/test_optim.py). Why not torch.optim.SGD: its Optimizer methods (``add_param_group``
in its constructor, ``zero_grad``, ``state_dict``) are wrapped by ``torch._disable_dynamo``,
which imports ``torch._dynamo`` on first call: ~1.3 CPU-s in every process that trains (each
trial actor), for a compiler the CPU path never uses (torch 2.14.1). ``state_dict()`` is
torch's layout, and ``load_state_dict`` reads checkpoints written with torch's classes.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch.optim.sgd import sgd

# What torch.optim.SGD keeps in each param group beside its params (its defaults).
_GROUP = {"momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False,
          "maximize": False, "foreach": None, "differentiable": False, "fused": None}


class SGD:
    """``torch.optim.SGD(groups, lr=, momentum=, nesterov=, fused=)`` for the recipe's use:
    ``param_groups`` (each group's hyperparameters, ``lr`` included), ``state`` (param ->
    {"momentum_buffer": tensor}), ``zero_grad``, ``step``, ``state_dict``, ``load_state_dict``."""

    def __init__(self, groups: list[dict], *, lr: float, momentum: float = 0.0,
                 nesterov: bool = False, fused: bool | None = None):
        base = {**_GROUP, "lr": lr, "momentum": momentum, "nesterov": nesterov, "fused": fused}
        self.param_groups = [{**base, **g, "params": list(g["params"])} for g in groups]
        self.state: defaultdict[torch.Tensor, dict] = defaultdict(dict)  # as torch's

    def zero_grad(self) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for g in self.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            bufs = [self.state[p].get("momentum_buffer") for p in params]
            sgd(params, [p.grad for p in params], bufs,
                has_sparse_grad=any(p.grad.is_sparse for p in params), foreach=g["foreach"],
                fused=g["fused"], weight_decay=g["weight_decay"], momentum=g["momentum"],
                lr=g["lr"], dampening=g["dampening"], nesterov=g["nesterov"],
                maximize=g["maximize"])
            if g["momentum"]:
                for p, buf in zip(params, bufs, strict=True):
                    self.state[p]["momentum_buffer"] = buf

    def state_dict(self) -> dict:
        """torch.optim's layout: params by index across the groups, in order."""
        index: dict[torch.Tensor, int] = {}
        groups = []
        for g in self.param_groups:
            ids = [index.setdefault(p, len(index)) for p in g["params"]]
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
        state = {index[p]: dict(s) for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, saved: dict) -> None:
        """A state_dict of this class or of torch.optim.SGD (older checkpoints): the groups'
        hyperparameters, and each buffer on its param's device and dtype."""
        if len(saved["param_groups"]) != len(self.param_groups):
            raise ValueError("optimizer state: a different number of param groups")
        params = {}
        for g, s in zip(self.param_groups, saved["param_groups"], strict=True):
            if len(g["params"]) != len(s["params"]):
                raise ValueError("optimizer state: a param group of a different size")
            params.update(zip(s["params"], g["params"], strict=True))
            g.update({k: v for k, v in s.items() if k != "params"})
        self.state = defaultdict(dict, {
            params[i]: {k: v.to(dtype=params[i].dtype, device=params[i].device)
                        if isinstance(v, torch.Tensor) else v for k, v in s.items()}
            for i, s in saved["state"].items()
        })


class MilestoneLR:
    """``MultiStepLR(optimizer, milestones, gamma)``: ``step()`` at the end of each epoch; at a
    milestone epoch each group's rate becomes its current rate times gamma (per occurrence)."""

    def __init__(self, optimizer: SGD, milestones: list[int], gamma: float):
        self.optimizer, self.milestones, self.gamma = optimizer, list(milestones), gamma
        self.last_epoch = 0

    def step(self) -> None:
        self.last_epoch += 1
        if hits := self.milestones.count(self.last_epoch):
            for g in self.optimizer.param_groups:
                g["lr"] = g["lr"] * self.gamma ** hits

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, saved: dict) -> None:
        """This class's or MultiStepLR's (which holds last_epoch among its fields): the rates
        themselves are in the optimizer's groups."""
        self.last_epoch = int(saved["last_epoch"])
