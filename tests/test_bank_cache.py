"""The node cache of shared banks: fetched once, verified against the stored digest, evicted
least recently used first when over its size cap."""

import logging
import os
import threading

import torch

from kd_core.bank import TeacherBank
from kd_core.checkpoint import write_checkpoint
from kd_core.data import Augment
from sweeps.ray.teacher_bank import cached, load_shared_bank, sha256
from sweeps.store.ledger import CORRUPT, Ledger, digest_file
from sweeps.store.storage import Storage


def store_bank(store: Ledger, key: str, tmp, fill: float) -> None:
    bank = TeacherBank(torch.full((50, 2, 10), fill, dtype=torch.float16), torch.zeros(5, 10),
                       Augment(0, True))
    local = tmp / f"{key}.pt"
    write_checkpoint(local, {"bank": bank.state_dict(), "build_seconds": 0.0})
    rel = store.bank_file(key, "float16")
    store.storage.upload(rel, local)
    store.storage.write_json(digest_file(rel), {"size": local.stat().st_size,
                                                "sha256": sha256(local)})


def test_fetch_once_verify_and_evict(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("KDSWEEP_CACHE", str(tmp_path / "cache"))
    store = Ledger(Storage(str(tmp_path / "store")))
    store_bank(store, "a", tmp_path, 1.0)
    # trials of one teacher starting together on a node: all get the bank, one cached file
    banks = []
    threads = [threading.Thread(target=lambda: banks.append(load_shared_bank(store, "a",
                                                                              "float16")))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(banks) == 4 and all(torch.equal(b.logits, banks[0].logits) for b in banks)
    assert float(banks[0].logits[3, 1, 2]) == 1.0
    local = cached(store.bank_file("a", "float16"))
    assert local.exists() and [p.name for p in local.parent.glob("*.pt")] == [local.name]

    # a stored bank that does not match its digest (a torn upload, bit rot): the student's
    # worker goes without it and flags it, writing nothing of its teacher's; the driver moves
    # it aside with its digest
    good = store.storage.read_json(digest_file(store.bank_file("a", "float16")))
    store_bank(store, "b", tmp_path, 2.0)
    rel = store.bank_file("b", "float16")
    store.storage.write_json(digest_file(rel), good)
    with caplog.at_level(logging.WARNING):
        assert load_shared_bank(store, "b", "float16") is None
    flagged = [r for r in caplog.records if getattr(r, CORRUPT, None)]
    assert [getattr(r, CORRUPT) for r in flagged] == [rel] and store.has_bank("b", "float16")
    assert store.move_aside(rel, flagged[0].getMessage())
    assert not store.has_bank("b", "float16") and not store.storage.exists(digest_file(rel))
    assert list((tmp_path / "store" / "trials" / "b").glob("bank-float16.pt.corrupt-*"))

    # over the cap: the least recently used bank goes, never the one just fetched
    store_bank(store, "c", tmp_path, 3.0)
    monkeypatch.setenv("KDSWEEP_CACHE_GB", str(1.5 * local.stat().st_size / 2**30))
    os.utime(local, (1, 1))  # used long ago
    bank = load_shared_bank(store, "c", "float16")
    assert float(bank.logits[0, 0, 0]) == 3.0
    assert sorted(p.name for p in local.parent.glob("*.pt")) == ["c-float16.pt"]
    assert float(banks[0].logits[3, 1, 2]) == 1.0  # a mapped bank still reads after eviction


def test_a_cached_copy_is_used_only_while_storage_holds_that_bank(tmp_path, monkeypatch):
    """A teacher retrained (its bank rebuilt: another digest) or its bank gone from storage:
    the node's old copy is never read."""
    monkeypatch.setenv("KDSWEEP_CACHE", str(tmp_path / "cache"))
    store = Ledger(Storage(str(tmp_path / "store")))
    store_bank(store, "t", tmp_path, 1.0)
    assert float(load_shared_bank(store, "t", "float16").logits[0, 0, 0]) == 1.0
    store_bank(store, "t", tmp_path, 5.0)  # rebuilt from a retrained teacher
    assert float(load_shared_bank(store, "t", "float16").logits[0, 0, 0]) == 5.0
    store.storage.delete(store.bank_file("t", "float16"))
    assert load_shared_bank(store, "t", "float16") is None


def test_a_node_copy_that_rots_in_place_is_caught_when_mapped_and_fetched_again(
        tmp_path, monkeypatch, caplog):
    """Issue 41: bytes flipped in a node's cached bank, its size and mtime kept (its sidecar
    still matching the stored digest), were mapped unchecked and distilled from. Each map
    proves the copy's SHA-256: the rotted copy is named, fetched again, and the student reads
    the stored bank's values."""
    monkeypatch.setenv("KDSWEEP_CACHE", str(tmp_path / "cache"))
    store = Ledger(Storage(str(tmp_path / "store")))
    store_bank(store, "t", tmp_path, 1.0)
    assert float(load_shared_bank(store, "t", "float16").logits[7, 1, 3]) == 1.0
    local = cached(store.bank_file("t", "float16"))
    before = local.stat()
    data = bytearray(local.read_bytes())
    i = data.find(torch.full((4,), 1.0, dtype=torch.float16).numpy().tobytes())
    assert i > 0
    data[i:i + 400] = bytes(400)  # logits zeroed inside the tensor's storage
    local.write_bytes(bytes(data))
    os.utime(local, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert local.stat().st_size == before.st_size
    with caplog.at_level(logging.WARNING):
        bank = load_shared_bank(store, "t", "float16")
    assert bank is not None and bool((bank.logits == 1.0).all())
    [warning] = [r.getMessage() for r in caplog.records if "node-cache copy" in r.getMessage()]
    assert str(local) in warning and "fails its SHA-256" in warning
    assert "fetching it again" in warning
    assert sha256(local) == store.storage.read_json(
        digest_file(store.bank_file("t", "float16")))["sha256"]
    assert not [r for r in caplog.records if getattr(r, CORRUPT, None)]  # storage's copy is good
