"""The trainer: one model, teacher (CE) or student (KL / MSE against a frozen teacher).

Design, following airbench: the whole training split lives on the training device as one uint8
tensor; each epoch draws a permutation and one augmentation view per image on the device; batch
metrics accumulate in a device tensor and are read once per epoch (one host sync). Everything
that decides the next epoch (weights, optimizer, scheduler, RNG) is in ``state_dict()``, so a run
resumed from epoch k ends bit-identical to an uninterrupted one on the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from torch import nn

from .analysis import analyse, outputs, predictions
from .bank import TeacherBank, bank_nbytes, build_bank, logit_source
from .capture import capture, resolve
from .checkpoint import load_checkpoint
from .config import TrainConfig
from .data import ImageData, draw_views, render_views
from .losses import distillation_loss
from .metrics import EpochMetrics, predict, test_metrics, val_metrics
from .models import Classifier, build_model
from .optim import SGD, MilestoneLR


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def init_model(name: str, data: ImageData, seed: int) -> Classifier:
    """A freshly initialised model for ``data``, its weights fixed by ``seed``."""
    torch.manual_seed(seed)
    return build_model(name, data.num_classes, data.in_channels)


def model_state(model: Classifier) -> dict:
    """What a model checkpoint holds: its architecture and weights (no optimizer)."""
    return {"model_spec": dict(model.spec), "model": model.state_dict()}


def load_model(source, name: str | None = None) -> Classifier:
    """Rebuild a model (e.g. a teacher) from any checkpoint written by kd_core."""
    state = load_checkpoint(source, name)
    spec = state["model_spec"]
    model = build_model(spec["name"], spec["num_classes"], spec["in_channels"])
    model.load_state_dict(state["model"])
    return model


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # The paper decays conv/linear weights only: BatchNorm parameters and biases (ndim 1) are not.
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


class OnlineTeacher:
    """Teacher logits computed on the fly for the exact views the student sees."""

    def __init__(self, model: nn.Module):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


class Trainer:
    """Holds one run's state; ``epochs()`` trains from the current epoch to ``config.epochs``."""

    def __init__(
        self,
        model: Classifier,
        data: ImageData,
        config: TrainConfig,
        teacher: nn.Module | None = None,
        bank: TeacherBank | None = None,
    ):
        if config.loss != "ce" and teacher is None and bank is None:
            raise ValueError(f"loss={config.loss!r} distils from a teacher: pass teacher=")
        self.config = config
        self.data = data
        self.device = dev = resolve_device(config.device)
        # GPU fast path: bf16 autocast, channels_last convolutions, fused optimizer step.
        # On the CPU everything stays fp32 and contiguous, so resume is bit-exact there.
        # (config.bf16 / channels_last force either; config.step compiles or captures the
        # step: capture.py.)
        self.cuda = dev.type == "cuda"
        self.execution = resolve(config.step, config.bf16, config.channels_last, dev)
        self.autocast = self.execution.autocast
        self.memory_format = self.execution.memory_format
        self.model = model.to(dev, memory_format=self.memory_format)
        self.forward = torch.compile(self.model) if config.compile else self.model
        self.step_loss = capture(self._step_loss, self.execution.step)

        self.x_train = data.train_images.to(dev)
        self.y_train = data.train_labels.to(dev)
        self.y_clean = data.clean_labels.to(dev)
        self.x_test = data.test_images.to(dev)
        self.y_test = data.test_labels.to(dev)
        self.x_val = None if data.val_images is None else data.val_images.to(dev)
        self.y_val = None if data.val_labels is None else data.val_labels.to(dev)
        self._normalize = data.normalizer(dev)

        # Where teacher logits come from, in bank.logit_source's words: None (CE), "shared" (a
        # bank handed in), "private" (a bank built here for this run) or "online".
        self.teacher = None
        self.logit_source: str | None = None
        self._teacher_test_logits: torch.Tensor | None = None
        if config.loss != "ce":
            if bank is not None:
                # stays where it was mapped (host): epochs gather from it (TeacherBank.epoch)
                self.teacher, self.logit_source = bank, "shared"
            elif self._use_bank():
                self.teacher = self.build_bank(teacher.to(dev, memory_format=self.memory_format))
                self.logit_source = "private"
            else:
                teacher = teacher.to(dev, memory_format=self.memory_format)
                self.teacher, self.logit_source = OnlineTeacher(teacher), "online"
            if isinstance(self.teacher, TeacherBank):
                self._teacher_test_logits = self.teacher.test_logits.to(dev)

        self.optimizer = SGD(
            _param_groups(self.model, config.weight_decay),
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            fused=self.cuda or None,
        )
        self.scheduler = MilestoneLR(self.optimizer, config.milestone_epochs(), config.lr_gamma)
        self.generator = torch.Generator(device=dev).manual_seed(config.seed)
        self.epoch = 0
        self.history: list[dict] = []

    # ---- teacher -------------------------------------------------------------------------
    def _use_bank(self) -> bool:
        """Build a bank for this run alone (bank.logit_source, as one student)?"""
        cfg, aug = self.config, self.data.augment
        nbytes = bank_nbytes(len(self.y_train), aug, self.data.num_classes,
                             getattr(torch, cfg.bank_dtype))
        source, _ = logit_source(1, cfg.epochs, aug.n_views, nbytes,
                                 cfg.bank_budget_gb * 2**30, cfg.teacher_bank)
        return source != "online"

    def build_bank(self, teacher: nn.Module) -> TeacherBank:
        """The teacher's logits for every view of this run's data, on the training device."""
        return build_bank(
            teacher,
            self.x_train,
            self.x_test,
            self.data.augment,
            self.prepare,
            dtype=getattr(torch, self.config.bank_dtype),
            autocast=self.autocast,
        )

    # ---- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            **model_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "epoch": self.epoch,
            "history": list(self.history),
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])

    # ---- training ------------------------------------------------------------------------
    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """A batch of images as the model takes them: normalized, in the run's memory format."""
        x = self._normalize(images)
        return x.contiguous(memory_format=self.memory_format)

    def _train_epoch(self, max_steps: int | None = None) -> torch.Tensor:
        cfg, aug = self.config, self.data.augment
        n = len(self.y_train)
        perm = torch.randperm(n, generator=self.generator, device=self.device)
        views = draw_views(aug, n, self.generator, self.device) if aug.enabled else None
        banked = isinstance(self.teacher, TeacherBank)
        z_epoch = self.teacher.epoch(perm, views, self.device) if banked else None
        # Sums of: loss * batch, correct (trained labels), correct (clean), ||z_s - z_t||, count.
        sums = torch.zeros(5, device=self.device)
        self.model.train()
        stop = n if max_steps is None else min(n, max_steps * cfg.batch_size)
        for idx, x, y, z_bank in self.batches(perm, views, z_epoch, stop):
            loss, z_s, z_t = self.step_loss(x, y, z_bank)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            sums += self.batch_sums(loss, z_s, z_t, y, self.y_clean[idx])
        return sums

    def _step_loss(self, x: torch.Tensor, y: torch.Tensor, z_bank: torch.Tensor | None):
        """A training batch's loss, the student's logits and the teacher's: the part of the
        step that ``config.step`` compiles or captures (capture.py)."""
        cfg = self.config
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
            z_t = self.teacher_logits(x, z_bank)
            z_s = self.forward(x)
        loss = distillation_loss(z_s, z_t, y, loss=cfg.loss, tau=cfg.tau, alpha=cfg.alpha,
                                 **dict(cfg.loss_params))
        return loss, z_s, z_t

    def batches(self, perm: torch.Tensor, views, z_epoch: torch.Tensor | None, stop: int):
        """The epoch's training batches in ``perm``'s order up to ``stop``: (indices, images as
        the model takes them, trained labels, the bank's rows of the teacher's logits or None).
        Separate and fused training (kd_core.fused) draw the same batches from here."""
        size, aug = self.config.batch_size, self.data.augment
        for start in range(0, stop, size):
            idx = perm[start : start + size]
            if len(idx) < 2:  # BatchNorm cannot train on a batch of one
                continue
            v = None if views is None else views[start : start + size]
            x = self.x_train[idx]
            x = self.prepare(x if v is None else render_views(x, v, aug))
            z_bank = None if z_epoch is None else z_epoch[start : start + size]
            yield idx, x, self.y_train[idx], z_bank

    def teacher_logits(self, x: torch.Tensor, z_bank: torch.Tensor | None):
        """The teacher's logits for batch ``x``: its bank's rows, else its forward pass (online),
        else None (trained on the labels)."""
        if z_bank is not None:
            return z_bank.float()
        return None if self.teacher is None else self.teacher(x)

    @torch.no_grad()
    def batch_sums(self, loss, z_s, z_t, y, y_clean) -> torch.Tensor:
        """One batch's share of the epoch's sums: loss * batch, correct (trained labels),
        correct (clean), ||z_s - z_t||, count."""
        pred = z_s.argmax(1)
        dist = (z_s.float() - z_t.float()).norm(dim=1).sum() if z_t is not None else 0.0
        return torch.stack(
            [
                loss.detach() * len(y),
                (pred == y).sum(),
                (pred == y_clean).sum(),
                torch.as_tensor(dist, device=self.device),
                torch.tensor(len(y), device=self.device),
            ]
        ).float()

    def _teacher_test(self) -> torch.Tensor | None:
        if self.teacher is None:
            return None
        if self._teacher_test_logits is None:  # the frozen teacher's test logits never change
            self._teacher_test_logits = self._predict(self.teacher.model, self.x_test)
        return self._teacher_test_logits

    def _predict(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
            return predict(model, images, self.prepare, 1024)

    def analyse(self, teacher: nn.Module | None, keep_logits: bool = False,
                teacher_outputs: dict | None = None) -> tuple[dict[str, float], dict, dict]:
        """The paper's analyses (analysis.py) of the model as it stands, against ``teacher``
        (None: trained on labels), on the unaugmented training set (clean labels) and the test
        set: scalars named ``<split>_<measure>``, distributions by split, and the test set's
        per-image predictions (analysis.predictions; its logits with ``keep_logits``).
        ``teacher_outputs``: a dict the teacher's outputs per split are kept in and read from,
        shared by students of one teacher and data (a fused group's members, kd_core/fused.py),
        so that the teacher runs once for all of them."""
        if teacher is not None:
            teacher = teacher.to(self.device, memory_format=self.memory_format)
        weight = self.model.head.weight.detach().float()
        scalars, dists = {}, {}
        splits = (("train", self.x_train, self.y_clean), ("test", self.x_test, self.y_test))
        for split, x, y in splits:
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
                mine = outputs(self.model, x, self.prepare, 1024)
                theirs = None
                if teacher is not None:
                    cache = {} if teacher_outputs is None else teacher_outputs
                    if split not in cache:
                        cache[split] = outputs(teacher, x, self.prepare, 1024)
                    theirs = cache[split]
            s, d = analyse(mine, theirs, y, weight)
            scalars.update({f"{split}_{k}": v for k, v in s.items()})
            dists[split] = d
            if split == "test":
                per_image = predictions(mine[0], y, None if theirs is None else theirs[0],
                                        keep_logits)
        return scalars, dists, per_image

    def steps_per_epoch(self) -> int:
        return -(-len(self.y_train) // self.config.batch_size)

    def time_steps(self, steps: int, warmup: int = 2) -> tuple[float, float]:
        """Seconds per training step (after ``warmup`` untimed steps) and per test-set
        evaluation. Trains the weights but counts no epoch: for sizing a sweep, not for a run."""
        self._train_epoch(warmup).tolist()
        t0 = time.perf_counter()
        self._train_epoch(steps).tolist()  # .tolist() waits for the device
        t1 = time.perf_counter()
        self._predict(self.model, self.x_test).sum().item()
        return (t1 - t0) / steps, time.perf_counter() - t1

    def epochs(self) -> Iterator[EpochMetrics]:
        """Train the remaining epochs, yielding each one's metrics after it completes."""
        while self.epoch < self.config.epochs:
            t0 = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            sums = self._train_epoch().tolist()  # the epoch's one host sync
            yield self.end_epoch(sums, lr, t0, time.perf_counter() - t0)

    def end_epoch(self, sums: list[float], lr: float, t0: float, train_time: float,
                  logits=None) -> EpochMetrics:
        """Close an epoch trained from ``t0`` (perf_counter) at ``lr``, its ``sums`` (as
        ``_train_epoch`` adds them): step the schedule, evaluate when due, record the metrics.
        ``logits(images)``: this model's logits on a split (default: a pass of its own; a
        fused group hands in its members' from one pass, kd_core/fused.py)."""
        self.scheduler.step()
        self.epoch += 1
        loss_sum, correct, correct_clean, dist_sum, count = sums
        m = EpochMetrics(
            epoch=self.epoch,
            lr=lr,
            train_loss=loss_sum / count,
            train_acc=correct / count,
            train_acc_clean=correct_clean / count,
            epoch_time=0.0,
            train_time=train_time,
            logit_distance=dist_sum / count if self.teacher is not None else None,
        )
        if self.eval_due():
            logits = logits or (lambda images: self._predict(self.model, images))
            for k, v in test_metrics(logits(self.x_test), self.y_test,
                                     self._teacher_test()).items():
                setattr(m, k, v)
            if self.x_val is not None:
                for k, v in val_metrics(logits(self.x_val), self.y_val).items():
                    setattr(m, k, v)
        m.epoch_time = time.perf_counter() - t0
        self.history.append(m.as_dict())
        return m

    def eval_due(self) -> bool:
        """Is the epoch just counted one that evaluates (every eval_every, and the last)?"""
        return self.epoch % self.config.eval_every == 0 or self.epoch == self.config.epochs
