"""Worker side: the Ray Tune function trainable. A job trains one planned trial with kd_core, or
builds one teacher's logit bank; nothing here talks to MLflow or decides what runs next.

A training job reads its teacher from storage by content address, resumes from its own latest
checkpoint (resume.py), reports every epoch, and publishes its model and then its result record
(the "ended" marker) through the Ledger.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
import traceback
from dataclasses import dataclass

import torch
from ray import tune

from kd_core.checkpoint import checkpoint_bytes
from kd_core.fused import FusedGroup, fit_group
from kd_core.loop import DONE, Outcome, fit
from kd_core.run import RunSpec, build_trainer, load_run_data
from kd_core.train import model_state

from ..domain import faults
from ..domain.plan import Trial
from ..domain.record import EPOCH_FINALS, TrialResult, TrialState
from ..domain.scheduler import Job
from ..domain.spec import SweepSpec
from ..store.lease import ClaimLost, TrialClaim
from ..store.ledger import CORRUPT, Ledger, SweepFile, TrialFile, sweep_file, trial_file
from ..store.resume import Attempts, TrialCheckpoints, flush_on_exit, trained_model
from ..store.storage import Storage, StorageFull
from .curve import learning_curve_png
from .plugins import import_plugins
from .teacher_bank import build_shared_bank, load_shared_bank


def run_spec(spec: SweepSpec, trial: Trial) -> RunSpec:
    cfg = spec.train.config(
        loss=trial.loss,
        tau=1.0 if trial.tau is None else trial.tau,
        alpha=1.0 if trial.alpha is None else trial.alpha,
        seed=trial.seed,
        device="auto",
        loss_params=trial.params,
    )
    return RunSpec(
        dataset=spec.dataset.name,
        model=trial.model,
        train=cfg,
        data_root=spec.dataset.root,
        download=spec.dataset.download,
        noise_kind=trial.noise_kind,
        noise_rate=trial.noise_rate,
        validation=spec.dataset.validation,
    )


log = logging.getLogger(__name__)
# A job's report to Tune is its metrics plus one entry under this key: the worker's message to
# the driver (WorkerMessage). Nothing else in a report steers the driver.
MESSAGE = "kdsweep"


@dataclass(frozen=True)
class WorkerMessage:
    """What a job tells the driver beside its metrics, in each report.

    warnings: what kdsweep logged at WARNING in this worker since the last report (the driver
        prints them and files them on the trial's run).
    corrupt: [file, why] pairs: other trials' files (a teacher's model or bank) this worker
        found corrupt; it only reads them, and the driver moves them aside.
    outcome: once the job is over: the state its trial ended in (ledger.TrialState), its result
        in storage; or ``failed`` for good, with ``error``. Every later report repeats it.
    storage_full: storage refused a write for lack of space: the driver ends the run.
    member: in a fused job's report (a group of sibling trials, fusion.py), the trial the
        report is about: its epoch, its outcome. A fused job's outcome is per member, said
        once, in that member's report; a job of one trial leaves it out.
    analysis, curve: with the outcome of a trial this job published: the body of its
        analysis.json (JSON text: Tune flattens a report's dicts) and its curve.png (bytes), as
        written to storage, so that the driver logs them to the trial's MLflow run without
        reading them back (outputs). A trial found stored (another's, or an earlier run's)
        comes without them: the driver's tracker reads those from storage.
    members: in a fused job's report of a group epoch: each member's epoch that said no
        outcome (its metrics, and ``member``: its key), one report for all of them, not one
        each (each is a round trip to the driver: Tune's function API waits for the driver to
        take a report). The driver's consumers read it as the reports it stands for, one per
        member, in order (``member_results``); a member's outcome is always its own report.
    """

    warnings: tuple[str, ...] = ()
    corrupt: tuple[tuple[str, str], ...] = ()
    outcome: str | None = None
    error: str | None = None
    storage_full: str | None = None
    member: str | None = None
    analysis: str | None = None
    curve: bytes | None = None
    members: tuple[dict, ...] = ()

    def entry(self) -> dict:
        """The report's entry: the fields that say something."""
        return {MESSAGE: {k: v for k, v in dataclasses.asdict(self).items() if v}}

    @classmethod
    def of(cls, result: dict | None) -> WorkerMessage:
        """The message in a report (an empty one where there is none), as sent or as Tune
        hands results to searchers and schedulers: flattened (``kdsweep/outcome``)."""
        result = result or {}
        fields = dict(result.get(MESSAGE) or {})
        prefix = MESSAGE + "/"
        fields |= {k[len(prefix):]: v for k, v in result.items() if k.startswith(prefix)}
        for name in ("warnings", "corrupt"):
            fields[name] = tuple(tuple(x) if isinstance(x, list) else x
                                 for x in fields.get(name, ()))
        fields["members"] = tuple(fields.get("members", ()))
        return cls(**fields)

    @classmethod
    def take_outputs(cls, result: dict) -> dict | None:
        """The artifacts in a report (outputs), taken out of it in place (a Tune callback may
        change the result it is given: Tune then keeps it as the trial's last result): the
        curve's bytes reach MLflow, never Tune's trial state or experiment snapshots."""
        outputs = cls.of(result).outputs()
        if outputs is not None and isinstance(result.get(MESSAGE), dict):
            for name in ("analysis", "curve"):
                result[MESSAGE].pop(name, None)
        return outputs

    def outputs(self) -> dict | None:
        """The artifacts this job's worker made for its trial's run (file name -> JSON text
        or bytes: tracker.log_outputs), or None where it made none (the trial's were made
        elsewhere, or it ended without publishing): the driver's tracker reads them then."""
        if self.curve is None:  # every trial a worker publishes has its curve
            return None
        return {TrialFile.CURVE: self.curve} | (
            {TrialFile.ANALYSIS: self.analysis} if self.analysis is not None else {})


def member_results(result: dict) -> list[dict]:
    """The reports a report stands for: a fused job's report of a group epoch
    (WorkerMessage.members) as its members' own reports, in order, each its member's metrics
    beside the report's other entries (Tune's), its message naming the member, and the
    report's warnings and corrupt files with the first; any other report as itself (the same
    object: a consumer may change it in place). Read sent or flattened (WorkerMessage.of)."""
    message = WorkerMessage.of(result)
    if not message.members:
        return [result]
    prefix = MESSAGE + "/"
    base = {k: v for k, v in result.items() if k != MESSAGE and not k.startswith(prefix)}
    out = []
    for i, entry in enumerate(message.members):
        metrics = dict(entry)
        said = WorkerMessage(member=metrics.pop("member"),
                             **({} if i else {"warnings": message.warnings,
                                              "corrupt": message.corrupt}))
        out.append({**base, **metrics, **said.entry()})
    return out


class Warnings(logging.Handler):
    """The warnings kdsweep logs in this worker (a file moved aside, a teacher's model read
    from its checkpoint, a bank fetched again) and the other trials' files it flagged corrupt,
    held until the trial's next report carries them to the driver: a worker's own log never
    reaches the driver's console."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.held: list[str] = []
        self.corrupt: list[tuple[str, str]] = []
        self.ended: dict = {}  # the job's outcome (and error) once said: every later report too

    def emit(self, record: logging.LogRecord) -> None:
        self.held.append(record.getMessage())
        if rel := getattr(record, CORRUPT, None):
            self.corrupt.append((rel, record.getMessage()))

    def report(self, metrics: dict, **note) -> None:
        """tune.report: ``metrics``, and the message (WorkerMessage): the warnings held since
        the last report, and ``note`` (outcome, error, storage_full)."""
        if "outcome" in note and "member" not in note:  # a fused member's is its own
            self.ended = {k: note.pop(k) for k in ("outcome", "error") if k in note}
        held, self.held = tuple(self.held), []
        corrupt, self.corrupt = tuple(self.corrupt), []
        message = WorkerMessage(warnings=held, corrupt=corrupt, **self.ended, **note)
        tune.report({**metrics, **message.entry()})


def run_job(config: dict, spec: SweepSpec, driver_token: str) -> None:
    """Tune entry point (``spec`` and the driver's lease token are bound once with
    tune.with_parameters)."""
    warnings = Warnings()
    package = logging.getLogger("sweeps")
    package.addHandler(warnings)
    try:
        import_plugins(spec)  # before any name of theirs is built
        _run_job(Job.from_config(config), spec, driver_token, warnings.report)
    except StorageFull as e:
        # Not this trial's failure, and no retry can help: say so, and the driver ends the run.
        warnings.report({}, storage_full=str(e))
    finally:
        package.removeHandler(warnings)
        if warnings.held:  # raised after the trial's last report, or before its error
            # best effort: a report that fails here (the trial being stopped) must not hide
            # the error on its way out
            with contextlib.suppress(Exception):
                warnings.report({})


def _run_job(job: Job, spec: SweepSpec, driver_token: str, report) -> None:
    """One job; ``report(metrics, **note)`` is tune.report carrying the worker's message."""
    ledger = Ledger(Storage(spec.storage))
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    if job.kind == "bank":
        seconds = build_shared_bank(spec.dataset, spec.train.bank_dtype, ledger, job.trial.key,
                                    job.trial.seed)
        report({"bank_seconds": seconds})
        return
    if job.siblings:
        return _run_group(job, spec, ledger, driver_token, report)
    trial = job.trial
    # Another sweep on this storage may be training the same trial: wait for it, never train
    # it twice at once; its result is then ours too. A claim lost while training (this worker
    # paused past its TTL) is waited for the same way.
    while True:
        claim = TrialClaim(ledger.storage, trial.key, driver_token,
                           sweep_file(spec, SweepFile.LEASE))
        if not claim.acquire(finished=lambda: ledger.has_result(trial.key)):
            # another sweep's driver trained it meanwhile
            if (record := ledger.result(trial.key)) is not None:
                report(finals(record.to_dict()), outcome=record.state)
            return
        try:
            return _claimed(spec, trial, ledger, claim, report)
        except ClaimLost as e:
            log.warning("%s", e)
            if e.superseded:  # its driver is no longer the sweep's: the successor trains it
                raise
        finally:
            claim.release()


def _claimed(spec: SweepSpec, trial: Trial, ledger: Ledger, claim: TrialClaim, report) -> None:
    attempts = Attempts(ledger.storage, trial.key)
    try:
        train_trial(spec, trial, ledger, attempts, report, claim)
    except (StorageFull, ClaimLost):
        raise
    except Exception:
        # A real error (not a lost node: that never reaches here). Tune retries it from the
        # checkpoint until spec.max_failures; then it ends, its traceback in failed.json.
        text = traceback.format_exc()
        if attempts.error(text) > spec.max_failures:
            ledger.mark_failed(trial.key, text, errors=attempts.data["errors"])
            report({}, outcome=TrialState.FAILED, error=text)
            return
        raise


def train_trial(spec: SweepSpec, trial: Trial, ledger: Ledger, attempts: Attempts, report,
                claim: TrialClaim) -> None:
    """Train ``trial`` from its latest checkpoint and publish it, while ``claim`` is held: each
    epoch checks it, and publishing reads it first."""
    started = time.time()
    bank = teacher = None
    if trial.teacher_key is not None:
        if spec.train.teacher_bank != "off":  # a bank shared by all students of the teacher
            bank = load_shared_bank(ledger, trial.teacher_key, spec.train.bank_dtype)
        if bank is None:
            teacher = trained_model(ledger.storage, trial.teacher_key)
    trainer, noisy = build_trainer(run_spec(spec, trial), teacher, bank=bank)

    checkpoints = TrialCheckpoints(
        ledger.storage,
        trial.key,
        on_saved=lambda epoch: ledger.write_progress(trial.key, epoch, spec.train.epochs),
        guard=claim.check,
    )
    state = checkpoints.load_latest()
    if state is not None:
        trainer.load_state_dict(state)
    attempts.start(trainer.epoch)
    ledger.write_progress(trial.key, trainer.epoch, spec.train.epochs)  # running, from here
    forget = flush_on_exit(checkpoints)

    def publish(outcome: Outcome = DONE) -> dict:
        """Publish the trial's outcome; returns what its next report says (its outcome)."""
        return publish_trial(spec, trial, ledger, trainer, noisy, attempts, started, claim,
                             checkpoints, forget, outcome, analysed_teacher)

    def analysed_teacher():
        if trial.teacher_key is None or teacher is not None:
            return teacher  # labels only, or the online teacher already loaded
        return trained_model(ledger.storage, trial.teacher_key)  # students of a bank: at the end

    # Checkpoints upload in the background while the next epoch trains. An epoch reported and
    # then lost with its upload is trained again on resume, bit-exactly, and MLflow skips the
    # step it already holds: no step twice, no value that differs. The outcome is published
    # before the final report: a scheduler may end the trial right there.
    def after_epoch(epoch: int) -> None:
        faults.reached("epoch", f"{trial.generation}.{epoch}")
        faults.reached("seed-epoch", f"{trial.seed}.{trial.generation}.{epoch}")
        claim.check()

    outcome: dict = {}
    try:
        for m, published in fit(trainer, checkpoints, spec.train.checkpoint_every, publish,
                                after_epoch):
            report({**m.as_dict(), "realised_noise_rate": noisy.realised_rate}, **published)
            outcome |= published
    except ClaimLost:
        forget()  # the trial is another's now: no checkpoint of ours on exit
        raise
    if not outcome:
        # Every epoch is in the checkpoint but the result is not in storage (its claim found
        # none: a kill between the last checkpoint and publishing, or a deleted result):
        # publish it, train nothing.
        report(finals(trainer.history[-1] if trainer.history else {}), **publish())


def finals(metrics: dict) -> dict:
    """The final metrics (a search metric among them) of a trial reported without an epoch."""
    return {k: metrics[k] for k in EPOCH_FINALS if metrics.get(k) is not None}



def publish_trial(spec: SweepSpec, trial: Trial, ledger: Ledger, trainer, noisy, attempts: Attempts,
                  started: float, claim: TrialClaim, checkpoints: TrialCheckpoints, forget,
                  outcome: Outcome, analysed_teacher, teacher_outputs: dict | None = None
                  ) -> dict:
    """Publish ``trial``'s outcome (its model, analyses and result record, through the
    ledger), every epoch of it in storage first; returns what its next report says (its
    outcome, and its analysis and curve for the driver to log: WorkerMessage).
    ``analysed_teacher()``: the teacher its analyses compare with (None: labels);
    ``teacher_outputs``: its outputs, kept for the next sibling's analyses (Trainer.analyse)."""
    state, reason = outcome.state, outcome.reason
    claim.check(confirm=True)
    checkpoints.flush()  # every epoch of the record is in storage first
    faults.reached("before-publish")
    forget()
    record = TrialResult.from_history(
        trial.to_dict(),
        trainer.history,
        state=state,
        reason=reason,
        realised_noise_rate=noisy.realised_rate,
        labels_hash=noisy.labels_hash,
        started_at=attempts.data.get("first_start", started),
        logit_source=trainer.logit_source,
        cluster=spec.cluster,
        sweep=spec.name,
        starts=attempts.data["starts"],
        errors=attempts.data["errors"],
        preemptions=attempts.preemptions,
        resumed_from=attempts.data["resumed_from"],
    )
    # A diverged model teaches nothing: no model, so no student ever distils from it.
    model = dists = per_image = None
    if state == TrialState.DONE:
        model = checkpoint_bytes({**model_state(trainer.model), "trial": trial.to_dict()})
        record.analysis, dists, per_image = trainer.analyse(
            analysed_teacher(), spec.train.store_logits, teacher_outputs)
    curve = learning_curve_png(trainer.history, f"{trial.run_name}: {state}")
    ledger.publish(trial.key, model, record, dists, curve, per_image)
    said = {"outcome": state, "curve": curve}
    if dists is not None:
        said["analysis"] = json.dumps(dists, allow_nan=True)
    return said


# ---- fused jobs (kd_core/fused.py): sibling trials trained as one model, each its own trial ---

def asha_stops(spec: SweepSpec, ledger: Ledger):
    """A fused job's view of ASHA's decisions on its members (engine.StudentASHA): key -> the
    epoch ASHA stopped that member at, from its ``stop.json``, or None. Only a decision made for
    this job (its Tune trial id) counts: one left by an earlier run's job is not this run's."""
    job = tune.get_context().get_trial_id()

    def stopped(key: str) -> int | None:
        try:
            said = ledger.storage.read_json(trial_file(key, TrialFile.STOP))
        except (ValueError, UnicodeDecodeError):  # corrupt: no decision read
            return None
        if not isinstance(said, dict) or said.get("job") != job:
            return None
        return int(said.get("epoch", 0))

    return stopped


def _run_group(job: Job, spec: SweepSpec, ledger: Ledger, driver_token: str, report) -> None:
    """A fused job: its members (``job.members``, siblings: fusion.py) trained as one fused
    model, each still its own trial: its own claim, attempts, checkpoints, progress, reports
    (``member=`` its key) and result. A member already stored (by an earlier run, another
    sweep, or this job before Tune retried it) is reported and not trained again; a member
    another sweep's worker is training is waited for, as a job of one trial waits."""
    # Claims are taken in key order, so two sweeps whose groups overlap never wait on each other.
    members = sorted(job.members, key=lambda t: t.key)
    while True:
        claims: dict[str, TrialClaim] = {}
        try:
            for t in members:
                claim = TrialClaim(ledger.storage, t.key, driver_token,
                                   sweep_file(spec, SweepFile.LEASE))
                if claim.acquire(finished=lambda t=t: ledger.has_result(t.key)):
                    claims[t.key] = claim
                elif (record := ledger.result(t.key)) is not None:
                    report(finals(record.to_dict()), member=t.key, outcome=record.state)
            if not claims:
                return
            return _claimed_group([t for t in members if t.key in claims], spec, ledger,
                                  claims, report)
        except ClaimLost as e:
            log.warning("%s", e)
            if e.superseded:  # its driver is no longer the sweep's: the successor trains them
                raise
            # a member's claim was taken over (this worker paused past its TTL): the group
            # starts again; members stored meanwhile are reported, the others resume
        finally:
            for claim in claims.values():
                claim.release()


def _claimed_group(trials: list[Trial], spec: SweepSpec, ledger: Ledger,
                   claims: dict[str, TrialClaim], report) -> None:
    attempts = {t.key: Attempts(ledger.storage, t.key) for t in trials}
    ended: set[str] = set()  # members whose outcome is published (and reported)
    try:
        train_group(spec, trials, ledger, attempts, report, claims, ended)
    except (StorageFull, ClaimLost):
        raise
    except Exception:
        # As a job of one trial: each member left counts the error; one past max_failures
        # fails for good, and while any member has retries left, Tune retries the job (its
        # failed members are then found stored, and not trained again).
        text = traceback.format_exc()
        left = [t for t in trials if t.key not in ended]
        spent = [t for t in left if attempts[t.key].error(text) > spec.max_failures]
        for t in spent:
            ledger.mark_failed(t.key, text, errors=attempts[t.key].data["errors"])
            report({}, member=t.key, outcome=TrialState.FAILED, error=text)
        if len(spent) < len(left):
            raise


def train_group(spec: SweepSpec, trials: list[Trial], ledger: Ledger,
                attempts: dict[str, Attempts], report, claims: dict[str, TrialClaim],
                ended: set[str]) -> None:
    """Train sibling (or cousin) ``trials`` as one FusedGroup, each from its own latest
    checkpoint (members resumed at other epochs catch up first), and publish each as it ends
    (``ended`` gets its key), while their ``claims`` are held. One data pipeline; each teacher
    (bank or model) loaded once, whether one teacher's siblings or cousins under several."""
    started = time.time()
    lead = trials[0]
    data = load_run_data(run_spec(spec, lead))  # they share dataset, noise and seed
    sources: dict[str, tuple] = {}  # teacher key -> (bank, model): one of them, loaded once
    trainers: dict[str, tuple] = {}
    for t in trials:
        if t.teacher_key not in sources:
            bank = teacher = None
            if spec.train.teacher_bank != "off":
                bank = load_shared_bank(ledger, t.teacher_key, spec.train.bank_dtype)
            if bank is None:
                teacher = trained_model(ledger.storage, t.teacher_key)
            sources[t.teacher_key] = bank, teacher
        bank, teacher = sources[t.teacher_key]
        trainer, noisy = build_trainer(run_spec(spec, t), teacher, data=data, bank=bank)
        if trainer.logit_source == "private" and sum(
                u.teacher_key == t.teacher_key for u in trials) > 1:
            # built for this one: shared by its teacher's other members (a cousin alone under
            # its teacher keeps its private bank, as it would trained separately)
            bank = trainer.teacher
            sources[t.teacher_key] = bank, teacher
            trainer, noisy = build_trainer(run_spec(spec, t), teacher, data=data, bank=bank)
        trainers[t.key] = trainer, noisy
    by_trainer: dict[int, Trial] = {id(trainers[t.key][0]): t for t in trials}
    checkpoints, forgets = {}, {}
    for t in trials:
        trainer = trainers[t.key][0]
        cp = TrialCheckpoints(
            ledger.storage, t.key,
            on_saved=lambda epoch, k=t.key: ledger.write_progress(k, epoch, spec.train.epochs),
            guard=claims[t.key].check,
        )
        if (state := cp.load_latest()) is not None:
            trainer.load_state_dict(state)
        attempts[t.key].start(trainer.epoch)
        ledger.write_progress(t.key, trainer.epoch, spec.train.epochs)  # running, from here
        checkpoints[trainer], forgets[t.key] = cp, flush_on_exit(cp)
    group = FusedGroup([trainers[t.key][0] for t in trials])
    analysed: dict = {}  # teacher key -> its model, loaded once for its members' analyses
    teacher_outputs: dict = {}  # teacher key -> its outputs, computed once (Trainer.analyse)

    def analysed_teacher(key: str):
        def load():
            if (teacher := sources[key][1]) is not None:
                return teacher
            if key not in analysed:
                analysed[key] = trained_model(ledger.storage, key)
            return analysed[key]
        return load

    def publish(trainer, outcome: Outcome = DONE) -> dict:
        t = by_trainer[id(trainer)]
        said = publish_trial(spec, t, ledger, trainer, trainers[t.key][1], attempts[t.key],
                             started, claims[t.key], checkpoints[trainer], forgets[t.key],
                             outcome, analysed_teacher(t.teacher_key),
                             teacher_outputs.setdefault(t.teacher_key, {}))
        ended.add(t.key)
        return said

    def after_epoch(trainer, epoch: int) -> None:
        t = by_trainer[id(trainer)]
        faults.reached("epoch", f"{t.generation}.{epoch}")
        claims[t.key].check()

    stopped = asha_stops(spec, ledger) if spec.search.asha is not None else None
    held: list[tuple[Trial, dict]] = []  # the group epoch's members' epochs not yet reported
    epoch: list[tuple] = []  # (trainer, trial, metrics) of the group epoch's unpublished members

    def send() -> None:
        # one report for the members' epochs held (WorkerMessage.members), in order
        if held:
            report({}, members=tuple({**metrics, "member": t.key} for t, metrics in held))
            held.clear()

    try:
        for trainer, m, published in fit_group(group, checkpoints, spec.train.checkpoint_every,
                                               publish, after_epoch):
            t = by_trainer[id(trainer)]
            metrics = {**m.as_dict(), "realised_noise_rate": trainers[t.key][1].realised_rate}
            if published:  # an outcome is its member's own report, at once (after those held)
                send()
                report(metrics, member=t.key, **published)
            else:
                held.append((t, metrics))
                epoch.append((trainer, t, m))
            if not group.epoch_done:
                continue
            send()
            for trainer, t, m in epoch:
                if stopped is not None and (at := stopped(t.key)) is not None:
                    # ASHA stopped it (engine.StudentASHA): it leaves the group, stopped early
                    # with the epochs it trained; the others go on
                    group.drop(trainer)
                    report(finals(m.as_dict()), member=t.key, **publish(
                        trainer, Outcome(TrialState.STOPPED_EARLY,
                                         f"stopped by ASHA at epoch {at} (a fused job's member; "
                                         f"{trainer.epoch} trained)")))
            epoch.clear()
    except Exception as e:
        if isinstance(e, ClaimLost):  # the trials are another's now: no checkpoint on exit
            for forget in forgets.values():
                forget()
        # the epochs trained and held are reported as they were before the error (best
        # effort: a report that fails here must not hide the error)
        with contextlib.suppress(Exception):
            send()
        raise
    for t in trials:
        if t.key not in ended:
            # every epoch in its checkpoint, its result not in storage (a kill between the
            # last checkpoint and publishing): publish it, train nothing
            trainer = trainers[t.key][0]
            report(finals(trainer.history[-1] if trainer.history else {}), member=t.key,
                   **publish(trainer))
