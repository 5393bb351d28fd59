"""Atomic, code-free checkpoints that prove their bytes: torch.save on write, sealed with the
SHA-256 of what it wrote (seal.py); on read the seal is checked, then
torch.load(weights_only=True)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import torch

from .seal import CheckpointError, seal, unseal

__all__ = ["CheckpointError", "checkpoint_bytes", "load_checkpoint", "save_checkpoint",
           "unseal", "write_checkpoint"]
FORMAT = "kdsweep-checkpoint-v1"


def checkpoint_bytes(state: dict) -> bytes:
    """``state`` as a sealed checkpoint file's bytes."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    return seal(buf.getvalue())


def write_checkpoint(path: str | Path, state: dict) -> None:
    """torch.save ``state`` straight to ``path`` (no copy of it in memory as bytes), unsealed:
    for a file whose digest is kept beside it (a teacher's bank, teacher_bank.py)."""
    torch.save({"format": FORMAT, **state}, path)


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` so that ``path`` is either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(checkpoint_bytes(state))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(
    source: str | Path | bytes | BinaryIO, name: str | None = None, mmap: bool = False
) -> dict:
    """Load a checkpoint without executing code, its bytes proven first (``unseal``);
    CheckpointError names the file when it is bad. ``mmap`` (a file path only): tensors map the
    file's pages instead of copying them, so every process that loads the same file shares one
    copy in the page cache; the caller proves such a file (a bank's digest beside it)."""
    label = name or (str(source) if isinstance(source, (str, Path)) else "<checkpoint bytes>")
    if not mmap:
        try:
            if isinstance(source, (str, Path)):
                source = Path(source).read_bytes()
            elif not isinstance(source, bytes):
                source = source.read()
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {label} does not exist") from None
        source = io.BytesIO(unseal(source, label))
    try:
        state = torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {label} does not exist") from None
    except Exception as e:  # torch raises several types for truncated/corrupt zip archives
        raise CheckpointError(f"checkpoint {label} is truncated or corrupt: {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{label} is not a kdsweep checkpoint (no {FORMAT!r} marker)")
    return state
