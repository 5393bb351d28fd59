"""Fusion measurements: what `kdsweep plan --measure` found of fused against separate sibling
students (kd_core.profile.profile_fusion), where a sweep's driver reads them for
``resources.fuse: auto`` (engine.fuse_limit -> fusion.group_limit(measured=...)).

One sealed JSON file in the sweep's storage, beside its other files:
``sweeps/<name>/<cluster>/fusion.json`` (ledger.SweepFile.FUSION), so that whatever storage a
sweep runs from (a laptop's folder, a cluster's bucket), the measurement made for it travels
with it, and each cluster (its own device kind) keeps its own. Its body:

    {"version": 1,
     "entries": [{"model": "cnn-small", "device_kind": "cpu" | "gpu", "device": "cpu" | NAME,
                  "dataset": "digits", "batch_size": 64, "threads": 1, "measured_at": ISO,
                  "steps": 10, "rounds": 2,
                  "ks": {"4": {"separate": ..., "fused": ..., "speedup": ...,
                               "footprint": BYTES}, ...}}, ...]}

``separate`` and ``fused``: student-steps/s (medians over rounds); ``speedup`` = fused /
separate; ``footprint``: the fused job's bytes on its device. A new measurement of the same
(architecture, device kind) replaces the old one; others are kept. An entry measured under
another dataset or batch size than the spec's says nothing about this sweep: it is not used.
"""

from __future__ import annotations

import datetime
import logging

from kd_core.seal import SealBroken

from .ledger import SweepFile, sweep_file
from .storage import Storage

VERSION = 1
log = logging.getLogger(__name__)


def fusion_file(spec) -> str:
    return sweep_file(spec, SweepFile.FUSION)


def entry(model: str, gpu: bool, device: str, spec, threads: int, steps: int, rounds: int,
          profiles) -> dict:
    """A record entry from kd_core.profile.FusionProfile's of one architecture."""
    return {
        "model": model, "device_kind": "gpu" if gpu else "cpu", "device": device,
        "dataset": spec.dataset.name, "batch_size": spec.train.batch_size, "threads": threads,
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "steps": steps, "rounds": rounds,
        "ks": {str(p.k): {"separate": p.separate, "fused": p.fused, "speedup": p.speedup,
                          "footprint": p.footprint} for p in profiles},
    }


def write_fusion(storage: Storage, spec, entries: list[dict]) -> str:
    """Record ``entries`` (replacing those of the same architecture and device kind; a record
    that does not read is replaced whole); returns the file's URI."""
    rel = fusion_file(spec)
    try:
        old = (storage.read_json(rel) or {}).get("entries", [])
    except (ValueError, UnicodeDecodeError, AttributeError):
        old = []
    new = {(e["model"], e["device_kind"]) for e in entries}
    kept = [e for e in old if isinstance(e, dict)
            and (e.get("model"), e.get("device_kind")) not in new]
    storage.write_json(rel, {"version": VERSION, "entries": kept + entries})
    return storage.uri_of(rel)


def read_fusion(storage: Storage, spec) -> tuple[dict[tuple[str, str], dict[int, float]], str]:
    """(architecture, device kind) -> {K: speedup} from the sweep's record, for the entries
    measured under the spec's dataset and batch size; and, when the record is missing or does
    not read, why (a line for a warning; "" when it read)."""
    rel = fusion_file(spec)
    uri = storage.uri_of(rel)
    try:
        record = storage.read_json(rel)
    except SealBroken as e:
        return {}, f"{uri}: corrupt ({str(e).removeprefix(uri).strip()})"
    except (ValueError, UnicodeDecodeError) as e:
        return {}, f"{uri}: corrupt (not valid JSON: {e})"
    except OSError as e:
        return {}, f"{uri}: unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    if record is None:
        return {}, f"{uri}: none (`kdsweep plan --measure` records one)"
    try:
        if record.get("version") != VERSION:
            raise ValueError(f"version {record.get('version')!r}, not {VERSION}")
        out = {}
        for e in record["entries"]:
            if e["dataset"] != spec.dataset.name or e["batch_size"] != spec.train.batch_size:
                continue
            out[(e["model"], e["device_kind"])] = {
                int(k): float(v["speedup"]) for k, v in e["ks"].items()}
        return out, ""
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        return {}, f"{uri}: corrupt (not a fusion record: {type(e).__name__} {e})"
