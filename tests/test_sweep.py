"""End to end on a real local Ray and a real MLflow SQLite store (no mocks)."""

import io
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

from kd_core.checkpoint import load_checkpoint
from kd_core.data import load_dataset
from sweeps.app.progress import sweep_status
from sweeps.app.sweep import run_sweep
from sweeps.domain.plan import build_plan
from sweeps.domain.spec import SpecError, parse_spec
from sweeps.ray.engine import tune_dir
from sweeps.ray.teacher_bank import cache_dir
from sweeps.report import report
from sweeps.report.load import specs_in
from sweeps.store.ledger import CHECKPOINTS, CORRUPT, Ledger, sweep_file, trial_file
from sweeps.store.resume import trained_model
from sweeps.store.storage import Storage
from sweeps.tracking.sweep_run import publish_report, storage_location

pytestmark = pytest.mark.slow
EPOCHS = 3


def make_spec(tmp: Path, taus=(4.0,), name="e2e", **over):
    return parse_spec({
        "name": name,
        "dataset": {"name": "digits"},
        "chains": [["cnn-medium", "cnn-small"], ["cnn-medium", "cnn-small", "cnn-small"]],
        "train": {"epochs": EPOCHS, "batch_size": 128, "lr": 0.05},
        "grid": {"loss": ["kl", "mse"], "tau": list(taus), "noise": {"rate": [0.0, 0.4]},
                 "seeds": [0], "baselines": True},
        # named by its folder: a copy (copy_of) stores apart, so it is another cluster
        "storage": str(tmp / f"store-{tmp.name}"),
        "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "cluster": "test-cluster",
        # per-architecture requests go through Tune's resource callback (engine.job_resources)
        "resources": {"models": {"cnn-small": {"cpu": 1, "memory_gb": 0.5}}},
        **over,
    })


def finished_at(spec) -> dict[str, float]:
    storage = Storage(spec.storage)
    out = {}
    for t in build_plan(spec).trials:
        r = storage.read_json(trial_file(t.key, "result.json"))
        if r:
            out[t.key] = r["finished_at"]
    return out


@pytest.fixture(scope="session")
def sweep(tmp_path_factory, worker_id, request):
    """One sweep of 12 trials for the tests that read it, trained once per test run: the first
    test process to ask trains it in its local Ray, the other (xdist) reuses it, under a file
    lock (xdist's how-to for a session fixture executed once). The tests that change it work
    on a copy (copy_of)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base if worker_id == "master" else base.parent  # the run's own, shared by workers
    tmp, log = root / "sweep", root / "sweep.log"
    spec = make_spec(tmp)
    with FileLock(str(root / "sweep.lock")):
        if not log.exists():  # written once the sweep has run to its end
            request.getfixturevalue("local_ray")
            out = io.StringIO()
            run_sweep(spec, out=out)
            log.write_text(out.getvalue())
    return tmp, spec, Storage(spec.storage).uri_of(Ledger.results_file(spec)), log.read_text()


@pytest.mark.check  # the end-to-end sweep of the per-change tier (make check)
def test_every_trial_has_one_parquet_row_and_one_child_run(sweep, tmp_path):
    tmp, spec, uri, log = sweep
    plan = build_plan(spec)
    # gen0: teacher + 1 baseline per noise; gen1: 2 settings x 2 noise; gen2: same
    assert [len(s) for s in plan.generations] == [4, 4, 4]
    df = pd.read_parquet(uri)
    assert len(df) == 12 and set(df.key) == {t.key for t in plan.trials}
    assert (df.state == "done").all() and (df.epochs == EPOCHS).all()
    assert df.test_acc.between(0, 1).all() and (df.cluster == "test-cluster").all()
    assert df[df.generation > 0].logit_distance.notna().all()
    # The bank policy: a teacher of two students (kl, mse) shares one bank in storage; a
    # teacher of one student (generation 2's) does not, its student builds its own.
    assert (df[df.generation == 1].logit_source == "shared").all()
    assert (df[df.generation == 2].logit_source == "private").all()
    storage = Storage(spec.storage)
    for generation, part in df[df.generation > 0].groupby("generation"):
        for teacher in set(part.teacher_key):
            assert storage.exists(trial_file(teacher, "bank-float16.pt")) == (generation == 1)
    assert (df.preemptions == 0).all() and (df.errors == 0).all()
    noisy = df[df.noise_rate == 0.4]
    assert noisy.realised_noise_rate.between(0.3, 0.5).all()
    assert noisy.labels_hash.nunique() == 1  # the whole lineage trains on the same noisy labels

    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kdsweep.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("kdsweep.role") == "trial"]
    assert len(parents) == 1 and len(children) == 12
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    by_key = {r.data.tags["kdsweep.key"]: r for r in children}
    assert set(by_key) == set(df.key)
    for t in plan.trials:
        r = by_key[t.key]
        tags = r.data.tags
        # its sweep's run by our tag: MLflow's parent tag would fold the trials under one row
        assert tags["kdsweep.sweep_run"] == parent.info.run_id and "mlflow.parentRunId" not in tags
        assert tags["kdsweep.generation"] == str(t.generation) and tags["kdsweep.chain"] == t.chain
        assert tags["kdsweep.cluster"] == "test-cluster" and tags["mlflow.source.git.commit"]
        assert tags["mlflow.user"] and tags["mlflow.source.name"] == "kdsweep run"
        if t.teacher_key:
            assert tags["kdsweep.teacher_run_id"] == by_key[t.teacher_key].info.run_id
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "test_acc")]
        assert sorted(steps) == list(range(1, EPOCHS + 1))
        row = df.set_index("key").loc[t.key]
        assert r.data.metrics["test_acc"] == pytest.approx(row.test_acc)  # the last epoch's
        assert not any(k.startswith("final_") for k in r.data.metrics)  # no step-0 copies
        # the analyses of the final model, at the last epoch's step
        m = r.data.metrics  # under their own prefix: their own section in the UI
        assert m["analysis/test_feature_norm"] == pytest.approx(row.test_feature_norm)
        assert ("analysis/train_logit_distance_median" in m) == (t.generation > 0)
        assert ("analysis/train_feature_cka" in m) == (t.generation > 0)
        assert row.test_acc_curve[-1] == pytest.approx(row.test_acc)  # the learning curve
        assert r.data.params["loss"] == t.loss and r.info.status == "FINISHED"
        arts = [a.path for a in client.list_artifacts(r.info.run_id)]
        assert "model.pt" in arts and "analysis.json" in arts
        assert "curve.png" in arts  # its learning curve, drawn by its worker
        assert tags["kdsweep.model"] == trial_file(t.key, "model.pt")  # relative to the store
        [dataset] = client.get_run(r.info.run_id).inputs.dataset_inputs  # the Dataset column
        assert dataset.dataset.digest == row.labels_hash[:36]
    parent_arts = [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert {"results.parquet", "results.csv", "spec.json"} <= set(parent_arts)
    assert "cnn-medium → cnn-small" in parent.data.tags["mlflow.note.content"]
    assert parent.data.params["dataset"] == "digits"
    # per cell (student, setting, noise), never pooled over them
    assert set(parent.data.metrics) == {"trials_done", "trials_not_done"}  # charts: the trials'
    assert parent.data.metrics["trials_done"] == 12
    cells = pd.read_csv(client.download_artifacts(parent.info.run_id, "cells.csv", str(tmp_path)))
    assert len(cells) == df.groupby(["generation", "chain", "loss", "tau", "noise_rate"],
                                    dropna=False).ngroups
    one = cells[(cells.student == "g2 cnn-medium>cnn-small>cnn-small") & (cells.setting == "mse")
                & (cells.noise_rate == 0.4)]
    mine = df[(df.generation == 2) & (df.loss == "mse") & (df.noise_rate == 0.4)]
    assert one.test_acc_mean.item() == pytest.approx(mine.test_acc.mean())
    assert one.seeds.item() == len(mine)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    # the link opens on the runs, not on MLflow 3's GenAI overview
    assert (f"#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}"
            "?workflowType=machine_learning") in log
    # the paper's analyses in Parquet: students' logit distances on the unaugmented train set
    students = df[df.generation > 0]
    assert (students.train_logit_distance_q25 <= students.train_logit_distance_median).all()
    assert (students.train_logit_distance_median <= students.train_logit_distance_q75).all()
    assert df[df.generation == 0].train_logit_distance_median.isna().all()
    assert (df.test_feature_norm > 0).all() and (df.train_entropy >= 0).all()
    analysis = Storage(spec.storage).read_json(trial_file(students.key.iloc[0], "analysis.json"))
    n_train = len(load_dataset("digits").train_labels)  # every unaugmented training image
    assert sum(analysis["train"]["logit_distance"]["counts"]) == n_train
    assert set(analysis["test"]["projection"]["points"]) == {"0", "1", "2"}
    # MLflow as researchers filter it: params as typed, none that do not apply, no Tune
    # bookkeeping among the metrics, names that lead with what tells runs apart
    kl4 = client.search_runs([exp.experiment_id], "params.tau = '4'")
    assert {r.data.tags["kdsweep.key"] for r in kl4} == {t.key for t in plan.trials if t.tau == 4}
    for r in children:
        t = next(t for t in plan.trials if t.key == r.data.tags["kdsweep.key"])
        assert ("tau" in r.data.params) == (t.loss == "kl")
        assert not {"pid", "timestamp", "time_this_iter_s", "training_iteration"} & set(
            r.data.metrics)
        assert r.info.run_name.startswith(f"{t.setting} noise=")  # what varies, first
        assert (r.data.params["setting"], r.data.params["student"]) == (t.setting, t.student)
        # a numeric tau for charts and range filters (1/tau: inf is 0); the analyses apart
        assert r.data.metrics.get("inv_tau") == (1 / t.tau if t.loss == "kl" else None)
        assert "train_feature_norm" not in r.data.metrics
    # Parquet: null (not NaN) where tau or alpha does not apply
    table = pq.read_table(uri)
    assert table.column("tau").null_count == sum(t.loss != "kl" for t in plan.trials)
    assert table.column("alpha").null_count == sum(t.generation == 0 for t in plan.trials)
    typed = pd.read_parquet(uri, dtype_backend="pyarrow")  # pandas keeps them null, not 0 or NaN
    assert typed.tau.isna().sum() == table.column("tau").null_count
    assert len(typed.groupby("tau", dropna=False)) == 2  # tau 4 and "does not apply"
    assert "generation 2: 4 done, 0 running, 0 pending, 0 failed / 4 [####################]" in log
    assert "sweep ETA" in log


def copy_of(sweep, dst: Path):
    """The fixture's sweep (storage, MLflow store and artifacts) copied to ``dst``, for a test
    that changes it: the others keep seeing the sweep as the fixture left it, in any order."""
    tmp, *_ = sweep
    shutil.copytree(tmp, dst, symlinks=True)
    (dst / f"store-{tmp.name}").rename(dst / f"store-{dst.name}")
    spec = make_spec(dst)
    return dst, spec, Storage(spec.storage).uri_of(Ledger.results_file(spec))


def test_rerun_trains_nothing_and_extension_trains_only_new_cells(sweep, local_ray, tmp_path):
    """(Each stored result read once: counted at an S3 server's door in test_s3.py.)"""
    tmp, spec, uri = copy_of(sweep, tmp_path / "copy")
    before = finished_at(spec)
    log = io.StringIO()
    run_sweep(spec, out=log)
    assert finished_at(spec) == before
    assert "0 to train" in log.getvalue() and "4 to train" not in log.getvalue()

    wider = make_spec(tmp, taus=(4.0, 20.0))
    log = io.StringIO()
    run_sweep(wider, out=log)
    after = finished_at(wider)
    new = set(after) - set(before)
    # tau=20 adds one kl student per noise rate in gen 1 (x2 chains share? no: 1 chain-position
    # per chain) and one in gen 2: gen1 direct/sequential share the cnn-medium>cnn-small node.
    assert len(new) == 4
    assert {k: after[k] for k in before} == before
    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name("e2e")
    # the copy's storage is another cluster's (name and storage): its runs, not the original's
    children = client.search_runs([exp.experiment_id], "tags.`kdsweep.role` = 'trial' and "
                                  f"tags.`kdsweep.storage` = "
                                  f"'{storage_location(Storage(spec.storage), spec.tracking_uri)}'")
    assert len(children) == 16 and len({r.data.tags["kdsweep.key"] for r in children}) == 16
    assert len(pd.read_parquet(uri)) == 16


def test_another_sweep_reuses_stored_trials(sweep, local_ray, tmp_path):
    tmp, spec, _ = copy_of(sweep, tmp_path / "copy")
    other = make_spec(tmp, name="e2e-copy")
    before = finished_at(other)
    run_sweep(other, out=io.StringIO())
    assert finished_at(other) == before  # nothing retrained across sweeps
    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name("e2e-copy")
    children = client.search_runs([exp.experiment_id], "tags.`kdsweep.role` = 'trial'")
    assert len(children) == 12
    assert all(r.data.tags.get("kdsweep.reused") == "true" for r in children)
    r = children[0]
    assert len(client.get_metric_history(r.info.run_id, "test_acc")) == EPOCHS


def test_status_and_report(sweep, tmp_path):
    tmp, spec, uri = copy_of(sweep, tmp_path / "copy")  # publishing writes to its MLflow
    status = sweep_status(spec)
    assert "generation 1: 4 done, 0 running, 0 pending, 0 failed / 4" in status
    spec_file = tmp / "spec.yaml"
    spec_file.write_text(json.dumps(spec.model_dump()))  # JSON is YAML
    text, paths = report([str(spec_file)], tmp_path / "rep")
    # the report only reads: logging it to the sweep's run is the explicit next step
    assert not list(tmp.rglob("report.html"))
    publish_report(specs_in([str(spec_file)]), text, paths, tmp_path / "rep")
    # one table per spec chain and noise rate, a column per generation
    assert "== cnn-medium>cnn-small>cnn-small (noise=0.4)" in text
    assert "g0 cnn-medium" in text and "g2 cnn-small" in text
    assert "kl tau=4" in text and "mse" in text
    # one seed: each seed's value, and no test (issue 20: no inference below three seeds)
    assert "(n=1)" in text and not re.search(r"\d ± \d", text)
    assert "no test: fewer than 3 seeds" in text and "p_Holm" not in text
    assert "Pearson r" in text
    # each claim with a verdict, and with one seed never more than "inconclusive at this n"
    for claim in ("C1", "C2", "C3", "C4", "C5"):
        assert f"== {claim} " in text
    assert set(re.findall(r"^== C\d .*: (\w+) \(ROWS", text, re.M)) == {"INCONCLUSIVE"}
    assert "inconclusive at this n (1 seed)" in text
    names = {p.name for p in paths if p.parent == tmp_path / "rep"}
    assert {"accuracy_vs_tau.png", "accuracy_vs_noise.png", "accuracy_vs_generation.png",
            "calibration_and_agreement.png", "learning_curves.png",
            "logit_distance_vs_accuracy.png", "logit_distance_distributions.png",
            "penultimate_projection.png",
            "report.html"} == names
    # table cells link to the MLflow runs behind them
    page = (tmp_path / "rep" / "report.html").read_text()
    some_run = pq.read_table(uri).column("mlflow_run_id")[0].as_py()
    assert (f"/runs/{some_run}?workflowType=machine_learning\"" in page
            or f"%27{some_run}%27" in page)
    assert all(p.stat().st_size > 5000 for p in paths if p.suffix in (".png", ".html"))
    # on the copy's sweep run (its store's files: this process's MLflow client caches where
    # the original's runs keep their artifacts)
    [published] = list(tmp.rglob("artifacts/report/report.html"))
    assert (published.parent / "accuracy_vs_tau.png").exists()
    assert (published.parent / "report.txt").read_text() == text
    assert list((published.parent / "tables").glob("*.tex"))  # in the report's own folders
    # two results files side by side (the second: the same trials as another sweep's)
    second = tmp_path / "e2e-copy.parquet"
    pd.read_parquet(uri).assign(sweep="e2e-copy").to_parquet(second)
    text2, _ = report([uri, str(second)], tmp_path / "rep2")
    assert "test-cluster/e2e" in text2 and "test-cluster/e2e-copy" in text2


def test_status_reads_storage_and_changes_nothing(sweep, tmp_path, monkeypatch):
    tmp, spec, _ = copy_of(sweep, tmp_path / "copy")
    plan = build_plan(spec)
    # the run left each result's state beside its stamp (issue 43): status reads no result
    # but the one changed since
    index = Ledger(Storage(spec.storage)).state_index(spec)
    assert set(index) == {t.key for t in plan.trials} and {e[2] for e in index.values()} == {
        "done"}
    reads = []
    real = Ledger.stored_state
    monkeypatch.setattr(Ledger, "stored_state", lambda self, k: reads.append(k) or real(self, k))
    student = next(t for t in plan.trials if t.generation == 2)
    result = Path(spec.storage) / trial_file(student.key, "result.json")
    result.write_text("{not json")
    files = sorted(p for p in Path(spec.storage).rglob("*"))
    status = sweep_status(spec)
    assert reads == [student.key]
    assert sorted(p for p in Path(spec.storage).rglob("*")) == files  # nothing moved aside
    assert result.read_text() == "{not json"
    assert "generation 2: 3 done" in status and "generation 1: 4 done" in status


def test_missing_dataset_fails_before_any_trial(tmp_path):
    spec = make_spec(tmp_path, dataset={"name": "cifar100", "root": str(tmp_path / "nodata")})
    with pytest.raises(SpecError, match="cifar-100-python"):
        run_sweep(spec, out=io.StringIO())
    assert not Path(spec.storage).exists() and not (tmp_path / "mlflow.db").exists()


def test_asha_stops_weak_students_and_skips_their_children(local_ray, tmp_path):
    """ASHA (optional early stopping) on the students: stopped trials keep their last metrics,
    have no model, and their own students are skipped rather than started."""
    spec = make_spec(tmp_path, taus=(0.5, 1.0, 2.0, 4.0, 8.0, 20.0), name="asha",
                     dataset={"name": "digits", "validation": 0.2},
                     search={"type": "grid", "asha": {"grace_period": 1,
                                                      "reduction_factor": 3}})
    spec = spec.model_copy(update={"grid": spec.grid.model_copy(
        update={"loss": ["kl"], "noise": spec.grid.noise.model_copy(update={"rate": [0.0]}),
                "baselines": False})})
    run_sweep(spec, out=io.StringIO())
    df = pd.read_parquet(Storage(spec.storage).uri_of("sweeps/asha/test-cluster/results.parquet"))
    gen1 = df[df.generation == 1]
    stopped = gen1[gen1.state == "stopped_early"]
    assert len(gen1) == 6 and len(stopped) >= 1 and (stopped.epochs < EPOCHS).all()
    assert (gen1.selected_on == "val_acc").all() and gen1.val_acc.notna().all()  # not test_acc
    storage = Storage(spec.storage)
    for key in stopped.key:
        assert not storage.exists(trial_file(key, "model.pt"))
        child = df[df.teacher_key == key]
        assert (child.state == "skipped").all()  # never started: no teacher to learn from


def test_trials_that_could_never_start_are_refused_before_any_work(local_ray, tmp_path):
    spec = make_spec(tmp_path, resources={"models": {"cnn-small": {"gpu": 0.5}}})
    with pytest.raises(SpecError, match=r"resources.models.cnn-small: a cnn-small trial asks "
                                        r"for gpu 0.5"):
        run_sweep(spec, out=io.StringIO())
    assert not Path(spec.storage).exists() and not (tmp_path / "mlflow.db").exists()


def test_optuna_samples_students_and_their_children_follow(local_ray, tmp_path):
    spec = make_spec(tmp_path, name="optuna", dataset={"name": "digits", "validation": 0.2},
                     chains=[["cnn-medium", "cnn-small", "cnn-small"]],
                     search={"type": "optuna", "num_samples": 3, "tau_range": [1.0, 8.0]})
    spec = spec.model_copy(update={"grid": spec.grid.model_copy(
        update={"noise": spec.grid.noise.model_copy(update={"rate": [0.0]}),
                "baselines": False})})
    log = io.StringIO()
    uri = run_sweep(spec, out=log)
    df = pd.read_parquet(uri)
    assert (df.state == "done").all(), log.getvalue()
    teacher = df[df.generation == 0]
    gen1, gen2 = df[df.generation == 1], df[df.generation == 2]
    assert len(teacher) == 1 and 1 <= len(gen1) <= 3 and len(gen2) == len(gen1)
    assert (gen1.teacher_key == teacher.key.iloc[0]).all()
    assert set(gen2.teacher_key) == set(gen1.key)  # each sample's student distils from it
    kl = gen1[gen1.loss == "kl"]
    assert kl.tau.between(1.0, 8.0).all()
    # each student of a sample keeps its teacher's loss (rows come in whatever order they ended)
    teacher_loss = gen1.set_index("key").loss
    assert (gen2.loss.to_numpy() == teacher_loss[gen2.teacher_key].to_numpy()).all()
    # selected on the validation split held out of the training split, never on the test set
    assert spec.search.metric == "val_acc" and (df.validation == 0.2).all()
    assert df.val_acc.between(0, 1).all() and df.val_loss.notna().all()
    assert (gen1.selected_on == "val_acc").all() and teacher.selected_on.isna().all()
    # every sampled trial recorded as it was found, each in a file of its own (no rewrite of
    # the whole list per sample): `kdsweep status` lists them all
    ledger = Ledger(Storage(spec.storage))
    assert {t["key"] for t in ledger.trial_list(spec)} == set(df.key)
    added = Storage(spec.storage).list_files(sweep_file(spec, "added"))
    assert len(added) == len(gen1) + len(gen2)
    client = MlflowClient(spec.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("optuna").experiment_id],
                              "tags.`kdsweep.role` = 'trial'")
    assert len(runs) == len(df)
    for r in runs:
        assert len(client.get_metric_history(r.info.run_id, "val_acc")) == EPOCHS
    # a rerun's start folds them into the trial list and removes their files (issue 43): what
    # added/ holds after it is only what the rerun found that no run had before
    run_sweep(spec, out=io.StringIO())
    listed = {t["key"] for t in Storage(spec.storage).read_json(
        sweep_file(spec, "trials.json"))["trials"]}
    assert set(df.key) <= listed
    again = Storage(spec.storage).list_files(sweep_file(spec, "added"))
    assert not {rel.rsplit("/", 1)[1].removesuffix(".json") for rel in again} & listed
    assert {t["key"] for t in ledger.trial_list(spec)} >= set(df.key)


def small_spec(tmp_path, name, taus=(4,), fuse="auto", **train):
    return parse_spec({
        "resources": {"fuse": fuse},
        "name": name, "dataset": {"name": "digits"}, "chains": [["cnn-small", "cnn-small"]],
        "train": {"epochs": EPOCHS, "batch_size": 128, "lr": 0.05, **train},
        "grid": {"loss": ["kl"], "tau": list(taus), "seeds": [0], "baselines": False},
        "storage": str(tmp_path / "store"), "tracking_uri": f"sqlite:///{tmp_path / 'm.db'}",
    })


def test_a_diverged_trial_is_recorded_never_teaches_and_is_not_retried(local_ray, tmp_path):
    spec = small_spec(tmp_path, "diverge", lr=1e6)  # NaN loss in the first epoch
    teacher, student = build_plan(spec).trials
    store = Ledger(Storage(spec.storage))
    uri = run_sweep(spec, out=io.StringIO())
    df = pd.read_parquet(uri).set_index("key")
    assert df.loc[teacher.key, "state"] == "diverged"
    assert df.loc[student.key, "state"] == "skipped"  # never distilled from a diverged model
    record = store.result(teacher.key)
    assert record.state == "diverged" and "non-finite" in record.reason
    assert not store.has_model(teacher.key)
    client = MlflowClient(spec.tracking_uri)
    runs = {r.data.tags["kdsweep.key"]: r for r in client.search_runs(
        [client.get_experiment_by_name("diverge").experiment_id], "tags.`kdsweep.role` = 'trial'")}
    assert runs[teacher.key].info.status == "FAILED"
    assert "non-finite" in runs[teacher.key].data.tags["kdsweep.reason"]
    assert "kdsweep.model" not in runs[teacher.key].data.tags  # it kept no model
    assert runs[student.key].info.status == "KILLED"
    assert "generation 0: 0 done, 0 running, 0 pending, 0 failed, 1 diverged" in sweep_status(spec)

    log = io.StringIO()
    run_sweep(spec, out=log)  # a plain rerun does not train it again, and says so
    assert store.result(teacher.key).finished_at == record.finished_at
    assert "1 trial(s) diverged in an earlier run" in log.getvalue()
    assert "--retry-failed" in log.getvalue()
    run_sweep(spec, out=io.StringIO(), retry_failed=True)  # asked: trained again from epoch 0
    again = store.result(teacher.key)
    assert again.finished_at > record.finished_at and again.resumed_from == [0]


def test_a_complete_but_unpublished_trial_publishes_on_its_next_start(sweep, local_ray,
                                                                     tmp_path):
    """A kill between the last checkpoint and publishing (or a deleted result): the rerun
    publishes from the stored state and trains no epoch. (On a copy of the fixture's sweep:
    its trials are stored, so the test pays only the rerun.)"""
    _, spec, _ = copy_of(sweep, tmp_path / "copy")
    store = Ledger(Storage(spec.storage))
    student = next(t for t in build_plan(spec).trials if t.generation == 1)
    before = store.result(student.key)
    store.storage.delete(trial_file(student.key, "result.json"))
    store.storage.delete(trial_file(student.key, "model.pt"))
    run_sweep(spec, out=io.StringIO())
    after = store.result(student.key)
    assert store.has_model(student.key) and after.finished_at > before.finished_at
    assert after.history == before.history  # the same epochs, none trained again
    assert after.resumed_from[-1] == EPOCHS


def test_a_result_whose_digit_changed_is_caught_and_republished_with_the_true_value(
        sweep, local_ray, tmp_path):
    """Issue 41: one digit of a stored test_acc changed (the JSON still valid) was exported as
    it was. Its seal fails: the rerun names it, moves it aside, and the trial publishes again
    from its stored final checkpoint (no epoch trained): the Parquet holds the true value;
    attempts whose digit changed are counted afresh, moved aside too."""
    from tests.test_ledger_state import change_a_digit

    _, spec, _ = copy_of(sweep, tmp_path / "copy")  # stored: the test pays only the rerun
    store = Ledger(Storage(spec.storage))
    student = next(t for t in build_plan(spec).trials if t.generation == 1)
    true = store.result(student.key)
    change_a_digit(store.storage, trial_file(student.key, "result.json"), "test_acc")
    change_a_digit(store.storage, trial_file(student.key, "attempts.json"), "starts")
    uri = run_sweep(spec, out=io.StringIO())
    df = pd.read_parquet(uri).set_index("key")
    assert df.loc[student.key, "test_acc"] == true.test_acc
    again = store.result(student.key)
    assert again.history == true.history and again.resumed_from[-1] == EPOCHS
    root = Path(spec.storage)
    moved = {p.name.split(".corrupt-")[0] for p in root.rglob("*.corrupt-*")}
    assert moved == {"result.json", "attempts.json"}


def test_a_rotted_node_bank_is_fetched_again_and_the_student_trains_as_on_a_clean_one(
        local_ray, tmp_path):
    """Issue 41: 4,000 bytes flipped in a node's cached bank (size and mtime kept), the grid
    widened: the new student distilled from it silently. The copy's SHA-256 is proven on every
    map: the worker names it, fetches it again, and the student's curve equals a control
    run's (the same trial trained again on a clean cache)."""
    spec = small_spec(tmp_path, "rot", taus=(4, 20))  # two students: a shared bank
    run_sweep(spec, out=io.StringIO())
    store = Ledger(Storage(spec.storage))
    teacher = build_plan(spec).trials[0]
    cached = cache_dir() / f"{teacher.key}-float16.pt"
    before = cached.stat()
    data = bytearray(cached.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4000] = bytes(b ^ 0xFF for b in data[middle:middle + 4000])
    cached.write_bytes(bytes(data))
    os.utime(cached, ns=(before.st_atime_ns, before.st_mtime_ns))

    wide = small_spec(tmp_path, "rot", taus=(4, 20, 8))
    [new] = [t for t in build_plan(wide).trials if t.tau == 8]
    out = io.StringIO()
    uri = run_sweep(wide, out=out)
    lines = [ln for ln in out.getvalue().splitlines() if "node-cache copy" in ln]
    assert any(str(cached) in ln and "fails its SHA-256" in ln for ln in lines), out.getvalue()
    df = pd.read_parquet(uri).set_index("key")
    assert df.loc[new.key, "logit_source"] == "shared" and (df.state == "done").all()
    trained = store.result(new.key).history

    store.reset(new.key)  # the control: the same trial again, on the clean cached copy
    run_sweep(wide, out=io.StringIO())
    assert untimed(store.result(new.key).history) == untimed(trained)


def untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if not k.endswith("_time")} for h in history]


def test_corrupt_files_are_moved_aside_and_derived_again(local_ray, tmp_path, caplog):
    """A truncated result, checkpoint slot, trial list and bank (in storage and in the node
    cache), garbage attempts, a finished teacher's model deleted: the rerun warns, moves each
    corrupt file aside, derives what it held again and ends with every trial done; nothing is
    retrained that the checkpoints already hold."""
    # two students: a shared bank. Not fused: the student redone alone below would equal its
    # fused epoch to float32 rounding only (test_fused_sweep); separate, bit-for-bit.
    spec = small_spec(tmp_path, "corrupt", taus=(4, 20), fuse="off")
    run_sweep(spec, out=io.StringIO())
    store = Ledger(Storage(spec.storage))
    teacher, student, _ = build_plan(spec).trials
    teacher_history = store.result(teacher.key).history
    student_history = store.result(student.key).history
    bank = store.bank_file(teacher.key, "float16")
    assert store.storage.exists(bank)
    def slot_epoch(slot):
        return load_checkpoint(store.storage.read_bytes(trial_file(student.key, slot)))["epoch"]

    newest = max(CHECKPOINTS, key=slot_epoch)
    for rel, cut in (
        (trial_file(student.key, "result.json"), 40),  # the student must run and read the bank
        (trial_file(student.key, newest), 300),
        (sweep_file(spec, "trials.json"), 10),
        (bank, 200),
    ):
        store.storage.write_bytes(rel, store.storage.read_bytes(rel)[:cut])
    store.storage.write_bytes(trial_file(student.key, "attempts.json"), b"\x00garbage")
    cached = cache_dir() / f"{teacher.key}-float16.pt"
    cached.write_bytes(cached.read_bytes()[:100])
    store.storage.delete(trial_file(teacher.key, "model.pt"))
    # status reads the corrupt trial list, uses the plan and changes nothing: the run writes
    # the list again (the driver's own file, derived from the plan)
    assert "pending" in sweep_status(spec)
    assert len(store.storage.read_bytes(sweep_file(spec, "trials.json"))) == 10

    out = io.StringIO()
    uri = run_sweep(spec, out=out)
    df = pd.read_parquet(uri).set_index("key")
    assert (df.state == "done").all()
    # What the student's worker moved aside reaches the driver's output, naming the file
    lines = [ln for ln in out.getvalue().splitlines()
             if f"warning from trial {student.key[:12]}" in ln]
    assert any("attempts.json" in ln and "moved aside" in ln for ln in lines), out.getvalue()
    assert any(newest in ln and "moved aside" in ln for ln in lines), out.getvalue()
    client = MlflowClient(spec.tracking_uri)  # ... and the student's run, as warnings.txt
    [run] = client.search_runs([client.get_experiment_by_name(spec.name).experiment_id],
                               f"tags.`kdsweep.key` = '{student.key}'")
    with tempfile.TemporaryDirectory() as d:
        text = Path(client.download_artifacts(run.info.run_id, "warnings.txt", d)).read_text()
    assert "attempts.json" in text and newest in text
    assert store.has_model(teacher.key)  # published again from its checkpoint ...
    assert store.result(teacher.key).history == teacher_history  # ... with no epoch retrained
    assert untimed(store.result(student.key).history) == untimed(student_history)  # redone exactly
    assert store.result(student.key).resumed_from[-1] == EPOCHS - 1  # from the previous slot
    # the shared bank was bad: the student built its own from the teacher instead
    assert df.loc[student.key, "logit_source"] in ("private", "online")
    assert len(store.trial_list(spec)) == 3  # written again
    root = Path(spec.storage)
    moved = {p.name.split(".corrupt-")[0] for p in root.rglob("*.corrupt-*")}
    assert moved == {"result.json", newest, "bank-float16.pt", "attempts.json"}

    # Bad models (8 bytes changed inside the teacher's, keeping its size; garbage in the
    # student's): the next run's reconcile proves each by the listing's size against the size
    # its result published (issue 43 item 8: no model read in full), so the student's is moved
    # aside and the student publishes again from its final checkpoint; publishing reads its
    # teacher's model in full (its analyses), which names the teacher's as failing its SHA-256
    # (flagged, moved aside by the driver). The run after publishes the teacher's again from
    # its final checkpoint: nothing retrained, the same weights.
    model, student_model = trial_file(teacher.key, "model.pt"), trial_file(student.key, "model.pt")
    weights = load_checkpoint(store.storage.read_bytes(model))["model"]
    data = store.storage.read_bytes(model)
    middle = len(data) // 2
    store.storage.write_bytes(model, data[:middle] + bytes(8) + data[middle + 8:])
    store.storage.write_bytes(student_model, b"garbage" * 100)
    out = io.StringIO()
    uri = run_sweep(spec, out=out)
    assert (pd.read_parquet(uri).state == "done").all()
    for key in (teacher.key, student.key):
        assert list(root.glob(f"trials/{key}/model.pt.corrupt-*"))
    assert store.model_fault(student.key) is None
    assert any(f"warning from trial {student.key[:12]}" in ln and model in ln
               and "fails its SHA-256" in ln for ln in out.getvalue().splitlines()), \
        out.getvalue()
    assert store.model_fault(teacher.key) == "gone"  # moved aside: published by the next run
    uri = run_sweep(spec, out=io.StringIO())
    assert (pd.read_parquet(uri).state == "done").all()
    assert store.model_fault(teacher.key) is None
    again = load_checkpoint(store.storage.read_bytes(model))["model"]
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    assert store.result(teacher.key).history == teacher_history
    assert untimed(store.result(student.key).history) == untimed(student_history)

    # A teacher's model corrupted while a run is under way: the student's worker reads the
    # same weights from the teacher's final checkpoint and flags the file (writing nothing of
    # its teacher's), for its driver to move aside.
    data = store.storage.read_bytes(model)
    store.storage.write_bytes(model, data[:middle] + bytes(8) + data[middle + 8:])
    with caplog.at_level(logging.WARNING, logger="sweeps"):
        read = trained_model(store.storage, teacher.key)
    assert all(torch.equal(weights[k], read.state_dict()[k]) for k in weights)
    flagged = [r for r in caplog.records if getattr(r, CORRUPT, None) == model]
    assert flagged and "fails its SHA-256" in flagged[0].getMessage()
    assert any("final checkpoint" in r.getMessage() for r in caplog.records)


def test_a_sweep_is_one_tune_experiment_that_forgets_its_finished_trials(
        local_ray, tmp_path, monkeypatch):
    """One Tune experiment for the whole sweep (no drain between experiments; actors warm
    throughout), its controller forgetting finished trials every KDSWEEP_TUNE_WINDOW ends
    (Tune's cost per trial flat): a student still starts once its teacher has ended."""
    monkeypatch.setenv("KDSWEEP_TUNE_WINDOW", "2")
    spec = small_spec(tmp_path, "windows", taus=(4, 8))  # a teacher and two students
    uri = run_sweep(spec, out=io.StringIO())
    df = pd.read_parquet(uri)
    assert len(df) == 3 and (df.state == "done").all()
    assert not (Path(spec.storage) / "sweeps" / "windows" / "local" / "tune").exists()
    tune = tune_dir(spec, Storage(spec.storage).uri)  # on the driver's disk, not in storage
    runs = sorted(tune.glob("run-*"))
    assert len(runs) == 1  # one experiment: the teacher, its bank and the two students
    assert sorted(j.name.split("-")[0] for j in runs[0].iterdir() if j.is_dir()) == [
        "bank", "train", "train", "train"]
    # Tune's last snapshot of the experiment holds the trials it had not forgotten: fewer
    # than the four it ran (the teacher and its bank went once both had ended)
    snapshot = json.loads(next(runs[0].glob("experiment_state-*.json")).read_text())
    assert len(snapshot["trial_data"]) < 4
