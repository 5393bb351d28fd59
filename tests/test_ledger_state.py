"""The ledger's state rule and the driver's reconcile, stepped by hand on a real file system:
each file a trial can leave, alone and together, and each repair reconcile makes."""

import itertools

import pytest
import torch

from kd_core.checkpoint import CheckpointError, checkpoint_bytes
from sweeps.domain.record import TrialResult
from sweeps.store.ledger import CHECKPOINTS, Ledger, TrialFile, TrialState, trial_file
from sweeps.store.snapshot import Snapshot, reconcile
from sweeps.store.storage import Storage

HISTORY = [{"epoch": 1, "train_loss": 1.0, "test_acc": 0.5}]
MARKERS = {TrialFile.FAILED: TrialState.FAILED, TrialFile.PROGRESS: TrialState.RUNNING,
           TrialFile.CLAIM: TrialState.CLAIMED}


class Key:
    def __init__(self, key: str):
        self.key = key


def model() -> bytes:
    return checkpoint_bytes({"model": {"w": torch.ones(4)}, "epoch": 1})


def publish(ledger: Ledger, key: str, status: TrialState) -> None:
    result = TrialResult.from_history({"key": key}, HISTORY, state=str(status))
    ledger.publish(key, model() if status is TrialState.DONE else None, result)


@pytest.mark.parametrize("present", [c for n in range(4)
                                     for c in itertools.combinations(MARKERS, n)])
def test_a_trials_state_is_its_files_in_order_of_precedence(tmp_path, present):
    ledger = Ledger(Storage(str(tmp_path)))
    for name in present:
        ledger.storage.write_json(trial_file("k", name), {"epoch": 1})
    expected = next((MARKERS[n] for n in MARKERS if n in present), TrialState.PENDING)
    assert ledger.state("k") is expected
    names = ledger.listing().names("k")  # the same from a listing as from probes
    assert ledger.state("k", names=names) is expected
    for status in (TrialState.DONE, TrialState.DIVERGED, TrialState.STOPPED_EARLY):
        publish(ledger, "k", status)  # a result outranks every other file
        assert ledger.state("k", ledger.result("k")) is status


def test_reconcile_repairs_each_kind_of_trial_and_nothing_else(tmp_path):
    ledger = Ledger(Storage(str(tmp_path)), repair=False)
    for key in ("good", "gone", "corrupt", "diverged"):
        publish(ledger, key, TrialState.DIVERGED if key == "diverged" else TrialState.DONE)
    ledger.storage.write_bytes(trial_file("diverged", CHECKPOINTS[0]), model())
    ledger.mark_failed("failed", "boom")
    ledger.storage.delete(trial_file("gone", TrialFile.MODEL))
    rel = trial_file("corrupt", TrialFile.MODEL)  # truncated: not the size its result says
    ledger.storage.write_bytes(rel, ledger.storage.read_bytes(rel)[:-8])
    keys = ["good", "gone", "corrupt", "diverged", "failed", "pending"]
    snapshot = Snapshot.load(ledger, keys)
    assert [snapshot.state(k) for k in keys] == [
        TrialState.DONE, TrialState.DONE, TrialState.DONE, TrialState.DIVERGED,
        TrialState.FAILED, TrialState.PENDING]
    fenced = []
    reconcile(snapshot, [Key(k) for k in keys], retry_failed=True,
              check_lease=lambda: fenced.append(1))
    # a model gone or of another size than its result published: the result forgotten
    # (publishes again from its checkpoints), the bad file moved aside; a diverged trial reset
    # (retry_failed) down to its checkpoints; a failed one retried; the good one and the
    # pending one untouched
    assert [snapshot.state(k) for k in keys] == [
        TrialState.DONE, TrialState.PENDING, TrialState.PENDING, TrialState.PENDING,
        TrialState.PENDING, TrialState.PENDING]
    assert ledger.result("good") and ledger.has_model("good")
    assert ledger.result("gone") is None and ledger.result("corrupt") is None
    assert list(tmp_path.rglob("model.pt.corrupt-*"))
    assert not ledger.storage.exists(trial_file("diverged", CHECKPOINTS[0]))
    assert ledger.failure("failed") is None
    assert len(fenced) >= 4  # every repair under the driver's lease


def test_reconcile_proves_models_by_their_published_size_and_use_proves_their_bytes(
        tmp_path, monkeypatch, caplog):
    """Issue 43 item 8: a cold node proves a model by the listing's size against the size and
    seal's digest its result published (no model byte read); one with bytes flipped under the
    same size passes reconcile and is caught where it is used (a student loading its teacher:
    named, flagged for its driver, the weights read from the teacher's final checkpoint); a
    result stored before it published a size is proven by reading its model, as before."""
    import logging

    from sweeps.store.ledger import CORRUPT
    from sweeps.store.resume import trained_model

    monkeypatch.setenv("KDSWEEP_CACHE", str(tmp_path / "cold-node"))  # proved nothing before
    storage = Storage(str(tmp_path / "store"))
    ledger = Ledger(storage, repair=False)
    for key in ("flipped", "legacy"):
        publish(ledger, key, TrialState.DONE)
    published = ledger.summary("flipped").model_file
    data = storage.read_bytes(trial_file("flipped", TrialFile.MODEL))
    assert published["size"] == len(data) and published["sha256"] == data[-64:].decode()
    legacy = ledger.storage.read_json(trial_file("legacy", TrialFile.RESULT))
    del legacy["model_file"]  # stored before results published their model's size
    storage.write_json(trial_file("legacy", TrialFile.RESULT), legacy)
    middle = len(data) // 2
    bad = data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 8]) + data[middle + 8:]
    for key in ("flipped", "legacy"):
        storage.write_bytes(trial_file(key, TrialFile.MODEL), bad)

    reads = []
    read_bytes = Storage.read_bytes
    monkeypatch.setattr(Storage, "read_bytes",
                        lambda self, rel: reads.append(rel) or read_bytes(self, rel))
    snapshot = Snapshot.load(ledger, ["flipped", "legacy"])
    reconcile(snapshot, [Key("flipped"), Key("legacy")], retry_failed=False,
              check_lease=lambda: None)
    models = [r for r in reads if r.endswith(TrialFile.MODEL)]
    assert set(models) == {trial_file("legacy", TrialFile.MODEL)}  # the flipped: never read
    assert snapshot.state("flipped") is TrialState.DONE
    assert snapshot.state("legacy") is TrialState.PENDING  # read, failed its SHA-256
    assert list((tmp_path / "store").rglob("legacy/model.pt.corrupt-*"))

    # Used: a student loads its teacher; the flipped model fails its seal, is named and
    # flagged for the driver to move aside, and the final checkpoint is tried instead (none
    # here: the next run trains the teacher's missing epochs)
    rel = trial_file("flipped", TrialFile.MODEL)
    with caplog.at_level(logging.WARNING, logger="sweeps"), \
            pytest.raises(CheckpointError, match="lack its final epoch"):
        trained_model(storage, "flipped")
    [flag] = [r for r in caplog.records if getattr(r, CORRUPT, None)]
    assert getattr(flag, CORRUPT) == rel and "fails its SHA-256" in flag.getMessage()
    assert "flipped/model.pt" in flag.getMessage()

    # A sealed model that is not the one its result published (same size, another digest)
    other = checkpoint_bytes({"model": {"w": torch.zeros(4)}, "epoch": 1})
    assert len(other) == len(data)
    storage.write_bytes(rel, other)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sweeps"), pytest.raises(CheckpointError):
        trained_model(storage, "flipped")
    [flag] = [r for r in caplog.records if getattr(r, CORRUPT, None)]
    assert "not the model its result published" in flag.getMessage()


def test_a_result_stores_its_history_apart_and_one_stored_inline_still_reads(tmp_path):
    """Issue 43: a result is stored without its history (history.json beside it), so a
    summary's read is as small at 200 epochs as at 2; a record stored before, its history
    inline, reads the same (its summary drops the history, its curve derived from it)."""
    ledger = Ledger(Storage(str(tmp_path)))
    history = [{"epoch": e, "train_loss": 1.0 / e, "test_acc": e / 200} for e in range(1, 201)]
    history[3].pop("test_acc")  # an epoch not evaluated
    record = TrialResult.from_history({"key": "new"}, history, cluster="c", sweep="s")
    ledger.publish("new", None, record)
    stored = ledger.storage.read_json(trial_file("new", TrialFile.RESULT))
    assert "history" not in stored and stored["test_acc_curve"].split(",")[3] == ""
    assert ledger.storage.read_json(trial_file("new", TrialFile.HISTORY)) == {"history": history}
    inline = record.to_dict()
    inline.pop("test_acc_curve")  # as records were stored before: the history inside
    ledger.storage.write_json(trial_file("old", TrialFile.RESULT), {**inline, "trial": {}})
    for key in ("new", "old"):
        full, summary = ledger.result(key), ledger.summary(key)
        assert full.history == history and ledger.history(key) == history
        assert summary.history is None
        assert summary.test_acc_curve == full.test_acc_curve == [h.get("test_acc")
                                                                 for h in history]
        assert summary.test_acc == 1.0 and summary.epochs == 200


def test_records_and_results_under_earlier_field_names_still_read(tmp_path):
    """Records and Parquet files written before 2026-12-05, when the state was called
    ``status`` and the logit source ``teacher_path``, read under today's names."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sweeps.domain.record import RENAMED
    from sweeps.store.results import SCHEMA, read_results

    earlier = {new: old for old, new in RENAMED.items()}
    ledger = Ledger(Storage(str(tmp_path)))
    old = TrialResult.from_history({"key": "k"}, HISTORY, state="diverged",
                                   logit_source="shared").to_dict()
    old = {earlier.get(k, k): v for k, v in old.items()}
    assert "status" in old and "teacher_path" in old
    ledger.storage.write_json(trial_file("k", TrialFile.RESULT), old)
    assert ledger.result("k").state == "diverged" and ledger.result("k").logit_source == "shared"
    assert ledger.state("k", ledger.result("k")) is TrialState.DIVERGED

    row = {f.name: None for f in SCHEMA} | {"key": "k", "state": "done", "test_acc": 0.5,
                                            "logit_source": "online"}
    table = pa.Table.from_pylist([row], schema=SCHEMA)
    table = table.rename_columns([earlier.get(c, c) for c in table.column_names])
    pq.write_table(table, tmp_path / "old.parquet")
    df = read_results([str(tmp_path / "old.parquet")])
    assert not set(earlier.values()) & set(df.columns)
    assert list(df.state) == ["done"] and list(df.logit_source) == ["online"]


def change_a_digit(storage: Storage, rel: str, field: str) -> None:
    """One digit of ``field``'s value changed in place: the file stays valid JSON."""
    text = storage.read_bytes(rel).decode()
    at = text.index(f'"{field}": ') + len(f'"{field}": ')
    digit = next(i for i in range(at, len(text)) if text[i].isdigit() and text[i] != "0")
    changed = text[:digit] + str(int(text[digit]) % 9 + 1) + text[digit + 1:]
    assert changed != text
    storage.write_bytes(rel, changed.encode())
    assert isinstance(__import__("json").loads(changed), dict)


def test_a_digit_changed_in_a_stored_json_file_is_caught_named_and_moved_aside(tmp_path, caplog):
    """Issue 41: one digit of test_acc changed in result.json (still valid JSON) was believed
    and exported. Every JSON file carries the SHA-256 of its canonical body (kd_core.seal): a
    result, attempts, progress, failure, the trial list and an added trial that changed are
    named, moved aside and derived again (a result republished from its checkpoints, attempts
    counted afresh, the list from the plan); a reader that must change nothing only notes it."""
    from types import SimpleNamespace

    from sweeps.store.ledger import read_json_checked, sweep_file
    from sweeps.store.resume import Attempts

    ledger = Ledger(Storage(str(tmp_path)))
    storage = ledger.storage
    result = TrialResult.from_history({"key": "k"}, [{"epoch": 1, "test_acc": 0.7612}])
    ledger.publish("k", model(), result)
    rel = trial_file("k", TrialFile.RESULT)
    assert ledger.result("k").test_acc == 0.7612
    change_a_digit(storage, rel, "test_acc")
    reader = Ledger(storage, repair=False)
    assert reader.result("k") is None and "fails its SHA-256 seal" in reader.found[rel]
    assert storage.exists(rel)  # a reader changes nothing
    with caplog.at_level("WARNING"):
        assert ledger.result("k") is None
    assert any(rel in r.getMessage() and "fails its SHA-256 seal" in r.getMessage()
               and "moved aside" in r.getMessage() for r in caplog.records)
    assert not storage.exists(rel) and list(tmp_path.rglob("result.json.corrupt-*"))

    attempts = Attempts(storage, "k")
    attempts.start(0)
    attempts.error("boom")
    change_a_digit(storage, attempts.rel, "errors")
    assert Attempts(storage, "k").data["errors"] == 0  # counted afresh, the bad one aside
    assert list(tmp_path.rglob("attempts.json.corrupt-*"))
    ledger.write_progress("k", 3, 10)
    ledger.mark_failed("k", "an error 1")
    for name, field in ((TrialFile.PROGRESS, "epoch"), (TrialFile.FAILED, "time")):
        change_a_digit(storage, trial_file("k", name), field)
        assert read_json_checked(storage, trial_file("k", name)) is None
    assert ledger.failure("k") is None

    spec = SimpleNamespace(name="s", cluster="c")
    ledger.save_trial_list(spec, [{"key": "a", "seed": 1}], fence=1)
    ledger.save_added_trial(spec, {"key": "b", "seed": 2}, fence=1)
    assert [t["key"] for t in ledger.trial_list(spec)] == ["a", "b"]
    change_a_digit(storage, sweep_file(spec, "trials.json"), "seed")
    assert [t["key"] for t in ledger.trial_list(spec)] == ["b"]
    change_a_digit(storage, sweep_file(spec, "added/b.json"), "seed")
    assert ledger.trial_list(spec) is None
    assert len(list(tmp_path.rglob("*.corrupt-*"))) == 6


def test_json_files_from_before_seals_are_read_as_they_are(tmp_path):
    """A file written by an earlier kdsweep has no seal: read (its shape checked, as then),
    and sealed once rewritten."""
    import json

    from kd_core.seal import JSON_SEAL

    storage = Storage(str(tmp_path))
    result = TrialResult.from_history({"key": "k"}, HISTORY)
    storage.write_bytes(trial_file("k", TrialFile.RESULT),
                        json.dumps(result.to_dict()).encode())
    assert Ledger(storage).result("k") == result
    storage.write_json("x.json", {"a": 1.5, "b": [float("inf")], "c": "é"})
    assert JSON_SEAL in json.loads(storage.read_bytes("x.json"))
    assert storage.read_json("x.json") == {"a": 1.5, "b": [float("inf")], "c": "é"}
