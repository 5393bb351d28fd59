"""Everything checked before Ray starts: the dataset, the storage, the MLflow store and the local
machine's resources. Each failure is a SpecError naming the field; each check that talks to a
server is bounded in time (a few seconds), so a typo never costs minutes of retries.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.fs as pafs

from ..domain.settings import env_number
from ..domain.spec import DatasetSpec, ResourcesSpec, SpecError, SweepSpec
from ..store.storage import Storage
from ..tracking.sqlite_store import check_sqlite_store

if TYPE_CHECKING:
    from kd_core.data import ImageData

log = logging.getLogger(__name__)
TIMEOUT = env_number("KDSWEEP_CHECK_TIMEOUT", 8.0)  # seconds per server check


def check_dataset(d: DatasetSpec) -> ImageData:
    """Fail before any work when the dataset cannot be read here."""
    try:
        from kd_core.data import load_dataset  # torch: not for `kdsweep status`

        data = load_dataset(d.name, root=d.root, download=d.download)
    except (FileNotFoundError, ValueError) as e:
        raise SpecError(f"dataset: {e}".splitlines()[0]) from None
    except Exception as e:  # a plugin's loader failing its own way: one line, naming it
        from kd_core.registry import DATASETS

        origin = DATASETS.resolve(d.name)[0].origin
        raise SpecError(f"dataset.name: {d.name} ({origin}) fails to load: "
                        f"{type(e).__name__}: {e}".splitlines()[0]) from None
    check_validation_share(d.validation, d.name, len(data.train_labels), data.num_classes)
    return data


def check_validation_share(share: float, name: str, images: int, classes: int) -> None:
    """A validation share holds out at least one image per class (the stratified split's own
    rule: as many held-out images as classes), else every trial would fail in its worker."""
    import math

    held = round(share * images)
    if share > 0 and held < classes:
        smallest = math.ceil(classes / images * 10_000) / 10_000
        raise SpecError(
            f"dataset.validation: {share:g} holds out {held} of {name}'s {images} training "
            f"images, fewer than its {classes} classes (a class would have no held-out image); "
            f"the smallest share that works for {name} is {smallest:g}")


# A model of at most this many bytes of parameters and buffers is checked on the CPU (its
# weights allocated, zeroed, one forward of 2 images); a larger one, or one with parameters
# it makes on its first call (torch's lazy modules), on the meta device only.
CPU_CHECK_BYTES = 64 * 2**20


def check_models(spec: SweepSpec, data: ImageData) -> None:
    """Every architecture of the chains builds, for the dataset's classes and channels, and
    gives logits of one per class: a plugin's model that cannot is one line naming it, before
    any work. Built on the meta device (no weights allocated); a small model then runs its
    forward on the CPU (`_logits_on_cpu`), any other on the meta device."""
    import torch

    from kd_core.models import build_model
    from kd_core.registry import MODELS

    for name in spec.architectures:
        origin = MODELS.resolve(name)[0].origin
        what = f"chains: model {name} ({origin}) for {spec.dataset.name}"
        shape = (2, *data.train_images.shape[1:])
        try:
            with torch.device("meta"):
                model = build_model(name, data.num_classes, data.in_channels)
            out = _logits_on_cpu(model, shape)
            if out is None:
                with torch.device("meta"):  # built anew: the CPU's try may have moved it
                    model = build_model(name, data.num_classes, data.in_channels)
                    out = model(torch.empty(shape))
        except Exception as e:
            raise SpecError(f"{what} ({data.num_classes} classes, {data.in_channels} channels) "
                            f"fails to build: {type(e).__name__}: {e}".splitlines()[0]) from None
        if tuple(getattr(out, "shape", ())) != (2, data.num_classes):
            raise SpecError(f"{what}: logits of shape {tuple(getattr(out, 'shape', ()))} for a "
                            f"batch of 2, not (2, {data.num_classes})")


def _logits_on_cpu(model, shape: tuple):
    """The meta-built ``model``'s output for zeros of ``shape``, run on the CPU with its
    weights zeroed; None where the meta device must answer instead: a model over
    CPU_CHECK_BYTES, one with lazy parameters, or one whose CPU forward fails (the meta
    device's answer, then, decides: a failure is the model's only if it fails there too).
    Why not the meta device for all: a forward there runs torch's Python decompositions,
    whose first call imports torch._dynamo (~1.2 CPU-s of every driver's start); the CPU's
    kernels are the ones training runs. The storage: models.base.to_cpu_storage (not
    ``to_empty``, which imports sympy)."""
    import torch
    from torch.nn.parameter import UninitializedParameter

    from kd_core.models.base import to_cpu_storage

    tensors = [*model.parameters(), *model.buffers()]
    if any(isinstance(t, UninitializedParameter) for t in tensors) or sum(
            t.numel() * t.element_size() for t in tensors) > CPU_CHECK_BYTES:
        return None
    try:
        with torch.no_grad():
            cpu = to_cpu_storage(model)
            for t in (*cpu.parameters(), *cpu.buffers()):
                t.zero_()
            return cpu(torch.zeros(shape))
    except Exception:
        return None


def _bounded(what: str, fn):
    """fn() in a daemon thread; SpecError when it does not answer within TIMEOUT seconds."""
    timeout = TIMEOUT
    box: dict = {}

    def call():
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=call, name="check", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise SpecError(f"{what}: no answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _unwritable(path: Path) -> Path | None:
    """Where creating ``path`` (a directory, with its parents) would fail: its nearest
    existing ancestor (or itself) when that is not a writable directory; None when it would
    not."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    return None if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK) else existing


def check_storage(uri: str, reading: bool = False) -> None:
    """The storage is a writable directory (local/NFS) or a reachable bucket (S3); ``reading``:
    one that exists already (for a command that only reads: nothing there is a typo)."""
    try:
        storage = Storage(uri)
    except (ValueError, OSError) as e:
        raise SpecError(f"storage: {e}") from None
    if storage.is_local:
        path = Path(storage.root)
        if path.exists() and not path.is_dir():
            raise SpecError(f"storage: {path} is a file, not a directory")
        if reading and not path.exists():
            raise SpecError(f"storage: {path} does not exist: nothing was stored there (check "
                            "the path)")
        if not reading and (existing := _unwritable(path)) is not None:
            raise SpecError(f"storage: {existing} is not a writable directory")
        return
    bucket = storage.root.split("/", 1)[0]

    def probe():
        return storage.fs.get_file_info(bucket).type

    try:
        kind = _bounded(f"storage: {storage.uri}", probe)
    except OSError as e:
        raise SpecError(f"storage: {storage.uri}: {str(e).splitlines()[0]}") from None
    if kind != pafs.FileType.Directory:
        raise SpecError(f"storage: bucket {bucket!r} does not exist at {storage.uri}")
    if not reading:
        check_conditional_writes(storage)


def check_conditional_writes(storage: Storage) -> None:
    """The storage enforces the conditional writes that fence leases and shared files
    (Storage.missing_conditional_writes, a probe object of its own, deleted after); one line
    naming what it lacks and what to use instead otherwise, before any lease."""
    try:
        missing = _bounded(f"storage: {storage.uri}", storage.missing_conditional_writes)
    except SpecError:
        raise
    except Exception as e:  # noqa: BLE001  refused credentials, a gateway's error page...
        raise SpecError(f"storage: {storage.uri}: probing its conditional writes failed "
                        f"({str(e).splitlines()[0]})") from None
    if missing:
        raise SpecError(
            f"storage: {storage.uri} does not enforce conditional writes ({'; '.join(missing)} "
            "accepted where it must be refused), so two drivers could hold one sweep: use AWS "
            "S3, an S3-compatible server that enforces them (MinIO since "
            "RELEASE.2024-05-07T06-41-25Z; see the README), or a local/NFS directory")


def check_tracking(uri: str) -> None:
    """The MLflow store at ``uri`` answers, accepts this process's credentials and has the
    schema this MLflow writes. Reads only: a file that is not such a store is refused, never
    moved."""
    if uri.startswith(("http://", "https://")):
        import mlflow.utils.rest_utils  # noqa: F401  imported here (~1 s), not inside the bound
        _bounded(f"tracking_uri: {uri}", lambda: _probe_server(uri))
        return
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.exists():  # created (crash-safely) by the Tracker
            if (existing := _unwritable(path.parent)) is not None:
                raise SpecError(f"tracking_uri: cannot create {path}: {existing} is not writable")
            return
        if path.is_dir():
            raise SpecError(f"tracking_uri: {path} is a directory, not an SQLite file")
        check_sqlite_store(uri, path, TIMEOUT)


def _timed_out(error: BaseException | None) -> bool:
    """requests' error is a timeout: its Timeout, or the ConnectionError it raises for a
    timeout that exhausted urllib3's retries (MaxRetryError whose reason is urllib3's
    ReadTimeoutError: what a silent server gives with MLflow's Retry, seen on a loaded
    machine, where the socket's timeout beats the check's own)."""
    import requests
    import urllib3

    if isinstance(error, requests.Timeout):
        return True
    reason = getattr(error.args[0], "reason", None) if error and error.args else None
    # urllib3's NewConnectionError (a refused connection) subclasses its ConnectTimeoutError
    return isinstance(reason, urllib3.exceptions.TimeoutError) and not isinstance(
        reason, urllib3.exceptions.NewConnectionError)


def _probe_server(uri: str) -> None:
    """One call that needs the credentials MLflow's client will send, sent by MLflow's own
    transport with its retries off, so it authenticates as the Tracker will (its credentials:
    MLFLOW_TRACKING_USERNAME and _PASSWORD, _TOKEN or ~/.mlflow/credentials; its TLS settings):
    /health answers anyone, so it would pass a wrong password."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri)
    try:
        r = http_request(creds, "/api/2.0/mlflow/experiments/search", "GET", max_retries=0,
                         timeout=TIMEOUT, raise_on_status=False, params={"max_results": 1})
    except MlflowException as e:  # MLflow's wrapper of what requests raised
        cause = e.__cause__ or e.__context__
        if _timed_out(cause):  # the socket's timeout beat _bounded's
            raise SpecError(f"tracking_uri: {uri}: no answer within {TIMEOUT:g} s") from None
        reason = str(cause or e).splitlines()[0]
        raise SpecError(f"tracking_uri: no MLflow server answers at {uri} ({reason})") from None
    if r.status_code in (401, 403):
        sent = (creds.username and creds.password) or creds.token
        given = "were refused" if sent else "are missing"
        raise SpecError(
            f"tracking_uri: the MLflow server at {uri} answered {r.status_code}: its "
            f"credentials {given} (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD in "
            "this environment)"
        )
    if r.status_code != 200:
        raise SpecError(f"tracking_uri: {uri} is not an MLflow server (HTTP {r.status_code})")


def local_resources() -> dict[str, float]:
    """What a local Ray would have, known before it starts."""
    import torch

    return {"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()}


def check_fits(resources: ResourcesSpec, models: list[str], have: dict[str, float]) -> None:
    """Refuse trials of ``models`` that could never start on a machine with ``have`` (Ray
    resource names): Tune would otherwise wait for them forever."""
    for model in models:
        ask = resources.for_model(model)
        for name, field in (("cpu", "CPU"), ("gpu", "GPU"), ("memory", "memory")):
            if field in have and ask.get(name, 0) > have[field]:
                where = (
                    f"resources.models.{model}" if model in resources.models else "resources"
                )
                raise SpecError(
                    f"{where}: a {model} trial asks for {name} {ask[name]:g}, more than this "
                    f"machine has ({have[field]:g}); pass --address to use a cluster"
                )


def check_cluster(address: str) -> None:
    """Something answers at the Ray cluster's address (a TCP connect to its head, bounded): a
    typo or a stopped head is one line here, before anything is written, instead of minutes of
    Ray's own retries. ``auto`` is checked where it names an address (RAY_ADDRESS, as inside
    `ray job submit`); otherwise Ray finds the cluster itself."""
    target = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address
    target = target.split("://", 1)[-1].rstrip("/")
    if not target or target in ("auto", "local"):
        return
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise SpecError(f"--address {address}: not HOST:PORT (the head's GCS address, as "
                        "`ray start --head` prints it), nor auto")
    try:
        socket.create_connection((host, int(port)), timeout=TIMEOUT).close()
    except OSError as e:
        raise SpecError(
            f"--address {address}: no Ray cluster answers at {host}:{port} "
            f"({e.strerror or e}); start its head (`ray start --head`), or leave --address out "
            "to run on a Ray of this sweep's own") from None


def check_all(spec: SweepSpec, address: str | None) -> ImageData:
    """Every check that needs no Ray: the sweep will join the cluster at ``address``, or start
    its own Ray here (None: it must fit this machine)."""
    if address is not None:
        check_cluster(address)
    check_storage(spec.storage)
    check_tracking(spec.tracking_uri)
    if address is None:
        check_fits(spec.resources, spec.architectures, local_resources())
    data = check_dataset(spec.dataset)
    check_models(spec, data)
    return data
