"""Atomic, code-free checkpoints: torch.save on write, torch.load(weights_only=True) on read."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import torch

FORMAT = "kdsweep-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, corrupt or not ours; the message names the file."""


def checkpoint_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    return buf.getvalue()


def write_checkpoint(path: str | Path, state: dict) -> None:
    """torch.save ``state`` straight to ``path`` (no copy of it in memory as bytes)."""
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
    """Load a checkpoint without executing code; CheckpointError names the file when it is bad.
    ``mmap`` (a file path only): tensors map the file's pages instead of copying them, so every
    process that loads the same file shares one copy in the page cache."""
    label = name or (str(source) if isinstance(source, (str, Path)) else "<checkpoint bytes>")
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        state = torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {label} does not exist") from None
    except Exception as e:  # torch raises several types for truncated/corrupt zip archives
        raise CheckpointError(f"checkpoint {label} is truncated or corrupt: {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{label} is not a kdsweep checkpoint (no {FORMAT!r} marker)")
    return state
