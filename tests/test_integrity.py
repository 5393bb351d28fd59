"""Every stored model and checkpoint proves its bytes: a SHA-256 sealed into the file, checked on
every read (kd_core/seal.py), on a real file system and real torch files."""

import io
import zipfile

import pytest
import torch

from kd_core.checkpoint import CheckpointError, checkpoint_bytes, load_checkpoint
from kd_core.seal import unseal
from sweeps.store.ledger import CHECKPOINTS, Ledger, trial_file
from sweeps.store.resume import TrialCheckpoints
from sweeps.store.storage import Storage


def state(epoch: int) -> dict:
    g = torch.Generator().manual_seed(epoch)
    return {"epoch": epoch, "model": {"w": torch.randn(64, 64, generator=g)}}


def flipped(data: bytes, at: int, n: int = 8) -> bytes:
    return data[:at] + bytes(b ^ 0xFF for b in data[at:at + n]) + data[at + n:]


def tensor_offset(archive: bytes) -> int:
    """Where the first tensor's bytes start inside torch's zip archive."""
    z = zipfile.ZipFile(io.BytesIO(archive))
    info = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    header = archive[info.header_offset:info.header_offset + 30]
    name_len = int.from_bytes(header[26:28], "little")
    extra_len = int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len


def test_eight_changed_bytes_inside_a_tensor_are_refused():
    """Defect 6: a model with 8 bytes changed inside a weight tensor loaded without error
    (max |w| = 3.4e38): torch.load checks no CRC."""
    data = checkpoint_bytes(state(3))
    assert torch.equal(load_checkpoint(data)["model"]["w"], state(3)["model"]["w"])
    bad = flipped(data, tensor_offset(data) + 100)
    torch.load(io.BytesIO(bad), weights_only=True)  # what torch alone says: nothing
    with pytest.raises(CheckpointError, match="model.pt fails its SHA-256"):
        load_checkpoint(bad, "model.pt")
    with pytest.raises(CheckpointError, match="fails its SHA-256"):
        load_checkpoint(data[:-1] + b"0" if data[-1:] != b"0" else data[:-1] + b"1", "x")


def test_a_file_from_before_seals_still_loads_and_is_checked_by_its_crcs():
    buf = io.BytesIO()
    torch.save({"format": "kdsweep-checkpoint-v1", **state(1)}, buf)
    legacy = buf.getvalue()
    assert unseal(legacy, "old.pt") == legacy
    assert load_checkpoint(legacy)["epoch"] == 1
    with pytest.raises(CheckpointError, match="old.pt is corrupt: .*data/0 fails its CRC-32"):
        load_checkpoint(flipped(legacy, tensor_offset(legacy) + 100), "old.pt")


def test_a_checkpoint_with_zeroed_bytes_is_moved_aside_and_the_previous_one_used(tmp_path):
    """Defect 6: a checkpoint with 64 zeroed bytes was resumed from silently."""
    storage = Storage(str(tmp_path))
    ckpt = TrialCheckpoints(storage, "k")
    ckpt.save(state(1))
    ckpt.save(state(2))  # the newest, in the second slot
    rel = trial_file("k", CHECKPOINTS[1])
    data = storage.read_bytes(rel)
    at = tensor_offset(data) + 256
    storage.write_bytes(rel, data[:at] + bytes(64) + data[at + 64:])
    loaded = TrialCheckpoints(storage, "k").load_latest()
    assert loaded["epoch"] == 1 and torch.equal(loaded["model"]["w"], state(1)["model"]["w"])
    assert not storage.exists(rel) and list(tmp_path.glob(f"trials/k/{CHECKPOINTS[1]}.corrupt-*"))


def test_a_local_checkpoint_file_is_sealed_and_checked(tmp_path):
    from kd_core.checkpoint import save_checkpoint

    path = tmp_path / "run.pt"
    save_checkpoint(path, state(5))
    assert load_checkpoint(path)["epoch"] == 5
    data = path.read_bytes()
    path.write_bytes(flipped(data, tensor_offset(data) + 10))
    with pytest.raises(CheckpointError, match="run.pt fails its SHA-256"):
        load_checkpoint(path)


def test_model_fault_names_what_is_wrong(tmp_path):
    ledger = Ledger(Storage(str(tmp_path)))
    assert ledger.model_fault("k") == "gone"
    rel = trial_file("k", "model.pt")
    data = checkpoint_bytes(state(2))
    ledger.storage.write_bytes(rel, data)
    assert ledger.model_fault("k") is None
    ledger.storage.write_bytes(rel, flipped(data, tensor_offset(data) + 1))
    assert "fails its SHA-256" in ledger.model_fault("k")


def test_moved_aside_is_said_once_the_file_has_moved(tmp_path):
    """Defect 8: the "moved aside" warning was printed before the move."""
    import logging

    storage = Storage(str(tmp_path))
    rel = trial_file("k", "result.json")
    storage.write_bytes(rel, b"{ torn")
    seen = []

    class Look(logging.Handler):
        def emit(self, record):
            seen.append((record.getMessage(), storage.exists(rel)))

    look = Look(logging.WARNING)
    logging.getLogger("sweeps").addHandler(look)
    try:
        assert Ledger(storage).result("k") is None
    finally:
        logging.getLogger("sweeps").removeHandler(look)
    [(message, still_there)] = seen
    assert "moved aside to" in message and not still_there


def test_a_lost_lease_names_its_holder_or_says_it_is_gone():
    """Defect 8: a lost claim named "host None, pid None"."""
    from sweeps.store.lease import holder

    assert holder({"host": "n1", "pid": 7, "fence": 3}) == "host n1, pid 7, lease 3"
    assert holder({}) == "since released, or not a lease"
    assert "None" not in holder({"token": "x"})


def test_a_model_changed_after_this_node_proved_it_is_proven_again(tmp_path, monkeypatch):
    from sweeps.store.ledger import Proven

    monkeypatch.setenv("KDSWEEP_CACHE", str(tmp_path / "cache"))
    ledger = Ledger(Storage(str(tmp_path / "store")))
    rel = trial_file("k", "model.pt")
    data = checkpoint_bytes(state(4))
    ledger.storage.write_bytes(rel, data)
    proven = Proven.load()
    assert ledger.model_fault("k", proven) is None and len(proven) == 1
    proven.save()
    again = Proven.load()
    assert again == proven  # kept between runs, in the node's cache
    ledger.storage.write_bytes(rel, flipped(data, tensor_offset(data) + 3))  # same size
    assert "fails its SHA-256" in ledger.model_fault("k", again)
