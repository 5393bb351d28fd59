"""Trial: the Ray Tune function trainable that trains one planned model with kd_core.

It reads its teacher from storage by content address, resumes from its own latest checkpoint
(resume.py), reports every epoch, and publishes its model and then its result (the "done"
marker) to storage. It never talks to MLflow: the driver does (see tracking.py).
"""

from __future__ import annotations

import math
import os
import time
import traceback

import torch
from ray import tune

from kd_core.checkpoint import checkpoint_bytes
from kd_core.run import RunSpec, build_trainer
from kd_core.train import load_model, model_state

from .plan import Trial, make_trial
from .resume import Attempts, TrialCheckpoints, flush_on_exit
from .spec import SweepSpec
from .storage import Storage, trial_file
from .teacher_bank import load_shared_bank


def run_spec(spec: SweepSpec, trial: Trial) -> RunSpec:
    cfg = spec.train.config(
        loss=trial.loss,
        tau=1.0 if trial.tau is None else trial.tau,
        alpha=1.0 if trial.alpha is None else trial.alpha,
        seed=trial.seed,
        device="auto",
    )
    return RunSpec(
        dataset=spec.dataset.name,
        model=trial.model,
        train=cfg,
        data_root=spec.dataset.root,
        download=spec.dataset.download,
        noise_kind=trial.noise_kind,
        noise_rate=trial.noise_rate,
    )


def summarise(trial: Trial, history: list[dict], noisy, wall_time: float) -> dict:
    """The trial's result record: its config and the paper's final metrics."""
    last = history[-1]
    accs = [h["test_acc"] for h in history if "test_acc" in h]
    finals = (
        "test_acc",
        "test_loss",
        "test_ece",
        "train_loss",
        "train_acc",
        "train_acc_clean",
        "logit_distance",
        "test_logit_distance",
        "test_agreement",
    )
    return {
        "trial": trial.to_dict(),
        "epochs": last["epoch"],
        **{k: last[k] for k in finals if k in last},
        "best_test_acc": max(accs) if accs else math.nan,
        "realised_noise_rate": noisy.realised_rate,
        "labels_hash": noisy.labels_hash,
        "wall_time": wall_time,
        "finished_at": time.time(),
        "history": history,
    }


def trial_from_config(spec: SweepSpec, config: dict) -> Trial:
    """The trial a Tune config describes: planned ({"trial": ...}) or sampled by a searcher
    ({"parent", "model", "loss", "tau"}: the key is computed from the sampled values)."""
    if "trial" in config:
        return Trial.from_dict(config["trial"])
    parent = Trial.from_dict(config["parent"])
    return make_trial(
        spec,
        config["model"],
        parent,
        loss=config["loss"],
        tau=config["tau"],
        alpha=spec.grid.alpha[0],
        noise_rate=parent.noise_rate,
        seed=parent.seed,
    )


def run_trial(config: dict) -> None:
    """Tune entry point; ``config`` holds "spec" (a SweepSpec dict) and the trial (see above)."""
    spec = SweepSpec.model_validate(config["spec"])
    trial = trial_from_config(spec, config)
    storage = Storage(spec.storage)
    stored = storage.read_json(trial_file(trial.key, "result.json"))
    if stored is not None:  # e.g. a searcher sampled an mse config again: report, don't retrain
        tune.report({k: v for k, v in stored.items() if isinstance(v, (int, float))})
        return
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    attempts = Attempts(storage, trial.key)
    try:
        _train(spec, trial, storage, attempts)
    except Exception:
        # A real error (not a lost node: that never reaches here). Tune retries it from the
        # checkpoint until spec.max_failures; then the trial ends, its traceback in failed.json.
        text = traceback.format_exc()
        if attempts.error(text) > spec.max_failures:
            storage.write_json(
                trial_file(trial.key, "failed.json"),
                {"error": text, "errors": attempts.data["errors"], "time": time.time()},
            )
            return
        raise


def _train(spec: SweepSpec, trial: Trial, storage: Storage, attempts: Attempts) -> None:
    bank = teacher = None
    if trial.teacher_key is not None:
        if spec.train.teacher_bank != "off":  # a bank shared by all students of the teacher
            bank = load_shared_bank(storage, trial.teacher_key, spec.train.bank_dtype)
        if bank is None:
            rel = trial_file(trial.teacher_key, "model.pt")
            teacher = load_model(storage.read_bytes(rel), name=storage.uri_of(rel))
    trainer, noisy = build_trainer(run_spec(spec, trial), teacher, bank=bank)

    checkpoints = TrialCheckpoints(storage, trial.key)
    state = checkpoints.load_latest()
    if state is not None:
        trainer.load_state_dict(state)
    attempts.start(trainer.epoch)
    forget = flush_on_exit(checkpoints)

    every = spec.train.checkpoint_every
    progress = trial_file(trial.key, "progress.json")
    for m in trainer.epochs():
        last = trainer.epoch == spec.train.epochs
        if last or trainer.epoch % every == 0:
            checkpoints.save(trainer.state_dict())  # before reporting: a reported epoch is kept
        else:
            checkpoints.remember(trainer.state_dict())
        storage.write_json(
            progress,
            {
                "epoch": trainer.epoch,
                "epochs": spec.train.epochs,
                "pid": os.getpid(),
                "node": os.uname().nodename,
                "time": time.time(),
            },
        )
        if last:  # publish before the final report: a scheduler may end the trial right there
            forget()
            publish(storage, trial, trainer, noisy, attempts)
        tune.report({**m.as_dict(), "realised_noise_rate": noisy.realised_rate})


def publish(storage: Storage, trial: Trial, trainer, noisy, attempts: Attempts) -> None:
    """The trained model, then the result: a result in storage always has its model beside it."""
    result = summarise(trial, trainer.history, noisy, sum(h["epoch_time"] for h in trainer.history))
    result.update(
        teacher_path=trainer.teacher_path,
        starts=attempts.data["starts"],
        errors=attempts.data["errors"],
        preemptions=attempts.preemptions,
        resumed_from=attempts.data["resumed_from"],
    )
    storage.write_bytes(
        trial_file(trial.key, "model.pt"),
        checkpoint_bytes({**model_state(trainer.model), "trial": trial.to_dict()}),
    )
    storage.write_json(trial_file(trial.key, "result.json"), result)
