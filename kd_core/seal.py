"""A checkpoint file's seal: the SHA-256 of torch's zip archive, as a trailer after it (``SEAL``
and 64 hex digits), written in the same atomic write as the archive, so that a file and its
digest never disagree by a crash; torch's reader ignores bytes after the archive. torch.load
itself checks no CRC (8 changed bytes inside a tensor loaded silently). A file from before seals
is checked against its zip's CRC-32s instead. No torch here: storage code proves files with it.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

SEAL = b"\n#kdsweep-sha256:"
_SEALED = len(SEAL) + 64


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, corrupt or not ours; the message names the file."""


def seal(archive: bytes) -> bytes:
    return archive + SEAL + hashlib.sha256(archive).hexdigest().encode()


def sealed_digest(data: bytes) -> str:
    """The SHA-256 a checkpoint file's seal names (its archive's), read from its trailer without
    proving it; for a file from before seals, the SHA-256 of its bytes."""
    if len(data) >= _SEALED and data[-_SEALED:-64] == SEAL:
        return data[-64:].decode("ascii", "replace")
    return hashlib.sha256(data).hexdigest()


def unseal(data: bytes, label: str) -> bytes:
    """The archive inside a checkpoint file's bytes, proven: its SHA-256 against the seal, or
    for a file from before seals, each member against its zip CRC-32. CheckpointError names
    the file otherwise."""
    if len(data) >= _SEALED and data[-_SEALED:-64] == SEAL:
        archive = data[:-_SEALED]
        if hashlib.sha256(archive).hexdigest().encode() != data[-64:]:
            raise CheckpointError(f"checkpoint {label} fails its SHA-256: its bytes changed "
                                  "after it was written")
        return archive
    try:
        bad = zipfile.ZipFile(io.BytesIO(data)).testzip()
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
        raise CheckpointError(f"checkpoint {label} is truncated or corrupt: {e}") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {label} is corrupt: {bad} fails its CRC-32")
    return data


# ---- JSON files' seal -------------------------------------------------------------------------
# A JSON object in storage (a result, attempts, progress, the trial list...) carries the SHA-256
# of its canonical body (sorted keys, no spaces, the seal itself left out) under JSON_SEAL: one
# digit changed keeps the file valid JSON, but no longer its seal. Objects written before seals
# (no JSON_SEAL key) are read as they are, checked for their shape only; rewritten, they are
# sealed.
JSON_SEAL = "kdsweep_sha256"


class SealBroken(ValueError):
    """A sealed JSON object whose body no longer matches its SHA-256; names the file."""


def _canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def seal_json(obj):
    """``obj`` with its seal (a JSON object; anything else as it is)."""
    if not isinstance(obj, dict):
        return obj
    body = {k: v for k, v in obj.items() if k != JSON_SEAL}
    return {**body, JSON_SEAL: hashlib.sha256(_canonical(body)).hexdigest()}


def unseal_json(obj, label: str):
    """``obj`` without its seal, proven; SealBroken names ``label`` when its body changed.
    An object without a seal (written before seals) is returned as it is."""
    if not isinstance(obj, dict) or JSON_SEAL not in obj:
        return obj
    body = {k: v for k, v in obj.items() if k != JSON_SEAL}
    if hashlib.sha256(_canonical(body)).hexdigest() != obj[JSON_SEAL]:
        raise SealBroken(f"{label} fails its SHA-256 seal: its bytes changed after it was "
                         "written")
    return body
