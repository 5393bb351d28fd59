"""Sweep storage on a local/NFS path or an S3-compatible URI, through pyarrow's filesystems.

On S3 the small, frequent requests go through boto3 instead: one GET per read, one PUT per
write, one HEAD per look, where pyarrow's filesystem spends two to four (a HEAD before each
read, a LIST after a 404 to look for a directory, directory markers before a write). Large
files (models, banks, checkpoints) stream through pyarrow. ``list_files`` reads a whole tree in
one paged listing (1,000 objects a request), its shards listed concurrently: what a driver
knows of thousands of trials comes from listings, never from a probe per planned file.

What lives where under the root is Ledger's business (ledger.py). Leases (lease.py) need one
thing pyarrow does not offer: a write that the storage itself refuses when the object is not the
version the writer last saw (``write_if``). S3 has it (PutObject with If-None-Match / If-Match,
through boto3); a local or NFS file system has it as compare-and-rename under an advisory lock
(filelock; NFS v4 carries those locks). S3-compatible storage that ignores the conditional
headers (older MinIO, some gateways) answers 200 to every put: ``missing_conditional_writes``
proves the storage refuses what it must, with a probe object of its own, before any lease, and
storage that does not is refused (preflight.check_storage).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import uuid
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pyarrow.fs as pafs

from kd_core.seal import seal_json, unseal_json

CREDENTIAL_KEYS = {"access_key", "secret_key", "session_token"}  # refused in a storage URI
# Where S3 credentials come from instead: the environment of each process (or a profile or
# instance role); never copied anywhere by kdsweep.
AWS_CREDENTIALS = frozenset(
    {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"}
)


def node_cache() -> Path:
    """This machine's own cache (never shared storage): teachers' banks, the migrated empty
    MLflow store, Ray Tune's experiment state. KDSWEEP_CACHE, else ~/.cache/kdsweep."""
    return Path(os.environ.get("KDSWEEP_CACHE") or Path.home() / ".cache" / "kdsweep")


def s3_filesystem(uri: str) -> tuple[pafs.S3FileSystem, str]:
    settings, root = s3_settings(uri)
    return pafs.S3FileSystem(**settings), root


def s3_settings(uri: str) -> tuple[dict, str]:
    """pyarrow S3FileSystem's settings and the bucket/prefix, for
    ``s3://bucket/prefix[?endpoint_override=host:port&scheme=http]``.

    The endpoint may also come from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (MinIO, moto, Ceph);
    credentials only from the usual AWS environment, profile or instance role, never the spec.
    """
    parsed = urlparse(uri)
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    if CREDENTIAL_KEYS & query.keys():
        raise ValueError(
            f"storage {uri.split('?')[0]}: credentials do not belong in the spec; set "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment instead"
        )
    endpoint = query.get("endpoint_override") or os.environ.get(
        "AWS_ENDPOINT_URL_S3", os.environ.get("AWS_ENDPOINT_URL")
    )
    kwargs = {
        "region": query.get("region")
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    }
    if endpoint:
        scheme = query.get("scheme")
        if "://" in endpoint:
            scheme, endpoint = endpoint.split("://", 1)
        kwargs.update(endpoint_override=endpoint.rstrip("/"), scheme=scheme or "https")
    return kwargs, (parsed.netloc + parsed.path).rstrip("/")


def s3_client(uri: str):
    """A boto3 S3 client for the same endpoint and region as ``s3_filesystem(uri)`` (for the
    conditional writes pyarrow lacks); credentials from the same environment."""
    import boto3
    from botocore.config import Config

    settings, _ = s3_settings(uri)
    endpoint = None
    if "endpoint_override" in settings:
        endpoint = f"{settings['scheme']}://{settings['endpoint_override']}"
    return boto3.client("s3", region_name=settings["region"], endpoint_url=endpoint,
                        config=Config(retries={"max_attempts": 3, "mode": "standard"},
                                      max_pool_connections=IN_FLIGHT))


# Requests in flight at once where a driver reads many objects (listing shards, stored results):
# enough to hide a 20-50 ms round trip, few enough for an S3 prefix's request rate.
IN_FLIGHT = 32


def concurrently(fn, items: list, width: int = IN_FLIGHT) -> list:
    """``[fn(x) for x in items]``, ``width`` at a time: each thread takes every width-th item
    in turn (one task per thread, not per item: handing out 100,000 items one by one costs
    more than reading them from a local disk)."""
    if len(items) <= 1 or width <= 1:
        return [fn(x) for x in items]
    n = min(width, len(items))
    with ThreadPoolExecutor(max_workers=n) as pool:
        parts = list(pool.map(lambda i: [fn(x) for x in items[i::n]], range(n)))
    out = [None] * len(items)
    for i, part in enumerate(parts):
        out[i::n] = part
    return out


# Where listing each wanted name's folder overtakes listing the whole folder (its first page
# read, its shards listed at once, each a page after another): per name while its rounds of
# IN_FLIGHT listings are at most PAGE_ROUNDS times the shards' pages one after another. A page
# of 1,000 objects takes longer to serve and parse than a listing of a trial's few files: on
# moto behind the 50 ms proxy per name stayed faster up to 5.6-8x the rounds (roots of 4 and 16
# pages: benchmarks/listing_rule.py, RESULTS.md), so 4 keeps to where it was measured faster.
PAGE_ROUNDS = 4.0
PAGE = 1000  # objects in one page of S3's ListObjectsV2


def folder_pages(last: str, alphabet: str) -> float:
    """How many pages a folder of uniformly spread names (hashes over ``alphabet``) holds,
    from the name ``last`` its first page ended at: the page held that share of the names."""
    share, scale = 0.0, 1.0
    for c in last[:8]:
        scale /= len(alphabet)
        share += alphabet.index(c) * scale if c in alphabet else 0.0
    return 1.0 / max(share + scale, 1e-12)


def per_name(names: int, pages: float, width: int = IN_FLIGHT, shards: int = 16) -> bool:
    """Whether ``names`` listings of their own, ``width`` at once, cost less time than the
    rest of a folder of ``pages`` pages listed in ``shards`` shards at once (PAGE_ROUNDS)."""
    return names / width <= PAGE_ROUNDS * max(1.0, pages / shards)


def names_first(names: int, pages: float, names_per_file: float, width: int = IN_FLIGHT,
                shards: int = 16) -> bool:
    """Whether to list a folder's names alone (a delimiter listing: a page per PAGE names)
    before ``names`` wanted ones, rather than list each wanted name's folder: the per-name
    rule (per_name) against the pages of names, ``pages`` x ``names_per_file`` (the first
    page's names per file)."""
    return not per_name(names, pages * names_per_file, width, shards)


class WriteConflict(Exception):
    """A conditional write refused by the storage itself: the object is no longer the version
    the writer last saw (another writer created, replaced or deleted it)."""


class StorageFull(OSError):
    """Storage refuses writes for lack of space (or quota); the message names the storage and
    the file. Freeing space and rerunning the same command continues where the run stopped."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return self.strerror


def is_full(e: BaseException) -> bool:
    """Storage (or a database on it) refused a write for lack of space or quota."""
    # pyarrow's filesystems raise a plain OSError whose text carries the errno; SQLite says
    # "database or disk is full" (through MLflow and SQLAlchemy, in the message's text)
    text = str(e).lower()
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "[errno 28]" in text or "database or disk is full" in text


class Storage:
    def __init__(self, uri: str):
        if uri.startswith("s3://"):
            self.fs, root = s3_filesystem(uri)
            self.uri = f"s3://{root}"
            self._settings_uri = uri  # with its query (an endpoint), for the boto3 client
        elif "://" in uri and not uri.startswith("file://"):
            raise ValueError(f"{uri.split('://')[0]}:// is not supported: give a directory "
                             "(local or NFS) or s3://bucket/prefix")
        else:
            root = os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))
            self.fs = pafs.LocalFileSystem()
            self.uri = root
        self.root = root.rstrip("/")

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @cached_property
    def width(self) -> int:
        """How many reads to keep in flight: IN_FLIGHT on S3 or a network file system, where
        each waits a round trip; one on a local disk, where threads only contend for the GIL
        (10,000 results read in 0.36 s one by one, 1.2 s by 32 threads, on the project's
        2-core machine)."""
        return IN_FLIGHT if not self.is_local or _network_mount(self.root) else 1

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def uri_of(self, rel: str) -> str:
        return f"{self.uri}/{rel}"

    def stamp(self, rel: str) -> list[int] | None:
        """The object's [size, mtime_ns] (what tells a changed file), None when there is none."""
        if self.is_local:
            try:
                st = os.stat(self.path(rel))
            except (FileNotFoundError, NotADirectoryError):
                return None
            return [st.st_size, st.st_mtime_ns] if stat.S_ISREG(st.st_mode) else None
        bucket, key = self._bucket_key(rel)
        try:
            r = self._s3.head_object(Bucket=bucket, Key=key)
        except Exception as e:
            if _missing(e):
                return None
            raise
        return [r["ContentLength"], _ns(r["LastModified"])]

    def exists(self, rel: str) -> bool:
        return self.stamp(rel) is not None

    def read_bytes(self, rel: str) -> bytes:
        """The object's bytes; FileNotFoundError when there is none."""
        if self.is_local:
            with open(self.path(rel), "rb") as f:
                return f.read()
        bucket, key = self._bucket_key(rel)
        try:
            return self._s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as e:
            if _missing(e):
                raise FileNotFoundError(self.uri_of(rel)) from None
            raise

    def list_files(self, prefix: str, shards: str = "",
                   only: Collection[str] | None = None,
                   stamps: bool = True) -> dict[str, list[int] | None]:
        """Every file under the folder ``prefix`` (path relative to the root -> [size,
        mtime_ns]), in one paged listing. ``shards``: the characters every name right under
        ``prefix`` starts with (hex digits for trial keys): a listing that does not fit one
        page is then read as one listing per character, concurrently. ``only``: the names
        right under ``prefix`` that are wanted (a sweep's trial keys, among every sweep's):
        only their files are returned, from whichever costs less, the listing of the whole
        folder or one listing per wanted name (``per_name``). ``stamps`` False: the names
        alone where that costs less (a local file's stamp is a stat call: None instead)."""
        prefix = prefix.rstrip("/") + "/"
        if only is not None and not only:
            return {}  # no name wanted: nothing to list
        if self.is_local:
            if only is None:
                return self._walk([self.path(prefix)], stamps)
            try:  # one read of the folder's names, then only the wanted folders' files
                with os.scandir(self.path(prefix)) as entries:
                    there = {e.name for e in entries}
            except (FileNotFoundError, NotADirectoryError):
                return {}
            return self._walk([self.path(prefix + n) for n in only if n in there], stamps)
        wanted = None if only is None else (only if isinstance(only, set | frozenset)
                                            else set(only))

        def keep(part: dict[str, list[int]]) -> dict[str, list[int]]:
            """Only the wanted names' files (each shard's as it comes: the root's whole
            listing is never held at once)."""
            if wanted is None:
                return part
            return {r: s for r, s in part.items() if r[len(prefix):].split("/", 1)[0] in wanted}

        first, more = self._list(prefix, pages=1)
        files = keep(first)
        if more and wanted is not None and shards:
            # the first page ends at a name whose place among all names (uniform: hashes)
            # tells how many pages the whole folder holds; the names before it it holds whole
            last = max(first)[len(prefix):].split("/", 1)[0]
            rest = [n for n in wanted if f"{n}/" >= f"{last}/"]
            pages = folder_pages(last, shards)
            # the names alone take a page per PAGE names, not per PAGE files: the first page's
            # names per file say how many pages of names the folder holds (an eighth of its
            # pages where each trial keeps eight files)
            names = len({r[len(prefix):].split("/", 1)[0] for r in first}) / len(first)
            if names_first(len(rest), pages, names, self.width, len(shards)):
                # many wanted names: which are there at all, from the folder's names alone
                # (one entry a name, not one a file: a fresh sweep's keys beside other sweeps'
                # trials are found absent in an eighth of the root's pages). Weighed against
                # the names' pages, not the files' (a fresh 2,000-trial sweep beside 50k
                # trials of 8 files listed its 2,000 folders one by one: 1,999 requests
                # against 51; benchmarks/moto_cost.py, RESULTS.md)
                there = self._names(prefix, shards)
                rest = [n for n in rest if n in there]
            if per_name(len(rest), pages, self.width, len(shards)):
                for part in concurrently(lambda n: self._list(f"{prefix}{n}/")[0], rest,
                                         self.width):
                    files.update(part)
                more = False
        if more and shards:
            files = {}
            for part in concurrently(lambda c: keep(self._list(prefix + c)[0]), list(shards),
                                     self.width):
                files.update(part)
        elif more:
            files = keep(self._list(prefix)[0])
        return files

    def _names(self, prefix: str, shards: str) -> set[str]:
        """The names right under the folder ``prefix`` (S3's ListObjectsV2 with a delimiter:
        one entry a name, however many files it holds), one listing per shard, concurrently."""
        bucket, key = self._bucket_key(prefix)

        def shard(c: str) -> set[str]:
            paginator = self._s3.get_paginator("list_objects_v2")
            return {p["Prefix"][len(key):].rstrip("/")
                    for page in paginator.paginate(Bucket=bucket, Prefix=key + c, Delimiter="/")
                    for p in page.get("CommonPrefixes", ())}

        return set().union(*concurrently(shard, list(shards), self.width))

    def _list(self, prefix: str, pages: int | None = None) -> tuple[dict[str, list[int]], bool]:
        """S3's ListObjectsV2 under ``prefix`` (at most ``pages`` pages); whether more is left."""
        bucket, key = self._bucket_key(prefix)
        files, start = {}, len(self.root) - len(bucket)
        paginator = self._s3.get_paginator("list_objects_v2")
        for n, page in enumerate(paginator.paginate(Bucket=bucket, Prefix=key), start=1):
            for o in page.get("Contents", ()):
                files[o["Key"][start:]] = [o["Size"], _ns(o["LastModified"])]
            if pages is not None and n >= pages:
                return files, bool(page.get("IsTruncated"))
        return files, False

    def _walk(self, tops: list[str], stamps: bool = True) -> dict[str, list[int] | None]:
        """The local listing of the folders ``tops``, folder by folder: concurrently on a
        network mount (each folder a round trip), one by one on a local disk (``width``);
        without ``stamps``, no stat call per file."""

        def scan(folder: str) -> tuple[dict[str, list[int]], list[str]]:
            files, folders = {}, []
            try:
                with os.scandir(folder) as entries:
                    for e in entries:
                        if e.is_dir(follow_symlinks=False):
                            folders.append(e.path)
                        elif e.is_file(follow_symlinks=False):
                            st = e.stat(follow_symlinks=False) if stamps else None
                            files[e.path[len(self.root) + 1:]] = (
                                [st.st_size, st.st_mtime_ns] if stamps else None)
            except (FileNotFoundError, NotADirectoryError):
                pass
            return files, folders

        files, pending = {}, list(tops)
        while pending:
            found = concurrently(scan, pending, self.width)
            pending = [d for _, folders in found for d in folders]
            for part, _ in found:
                files.update(part)
        return files

    def _full(self, rel: str) -> StorageFull:
        return StorageFull(f"storage {self.uri}: no space left writing {rel}; free space, then "
                           "run the same command again (what is stored is kept)")

    @contextlib.contextmanager
    def _writing(self, rel: str):
        """Yield (final path, temporary path) for a write of ``rel``. A write that fails leaves
        no temporary file behind, and one that fails for lack of space raises StorageFull."""
        final = self.path(rel)
        # an S3 object appears only once complete: written in place
        tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}" if self.is_local else final
        try:
            if self.is_local:  # S3 has no folders
                os.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
            yield final, tmp
        except BaseException as e:
            if self.is_local:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            if is_full(e):
                raise self._full(rel) from None
            raise

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write so that readers see the old object or the whole new one, never a part."""
        if not self.is_local:  # an S3 PUT is atomic by itself, and needs no folders
            bucket, key = self._bucket_key(rel)
            try:
                self._s3.put_object(Bucket=bucket, Key=key, Body=data)
            except Exception as e:
                if is_full(e):
                    raise self._full(rel) from None
                raise
            return
        with self._writing(rel) as (final, tmp):
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)

    def read_json(self, rel: str) -> dict | None:
        """The object as JSON, its seal proven and removed (kd_core.seal.unseal_json:
        SealBroken, a ValueError, when a byte changed); None when there is none (one request:
        no look before)."""
        try:
            return unseal_json(json.loads(self.read_bytes(rel)), self.uri_of(rel))
        except FileNotFoundError:
            return None

    def write_json(self, rel: str, obj) -> None:
        """``obj`` as JSON, sealed with the SHA-256 of its canonical body (kd_core.seal)."""
        self.write_bytes(rel, self.json_bytes(obj))

    @staticmethod
    def json_bytes(obj, indent: int | None = 1) -> bytes:
        """What write_json writes: ``obj`` as JSON with its seal (``indent`` None: on one line,
        through json's C encoder, for a large file no one reads by eye)."""
        return json.dumps(seal_json(obj), indent=indent, allow_nan=True).encode()

    def delete(self, rel: str) -> None:
        """Delete the object if there is one."""
        if not self.is_local:  # an S3 DELETE of nothing succeeds
            bucket, key = self._bucket_key(rel)
            self._s3.delete_object(Bucket=bucket, Key=key)
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(rel))

    def upload(self, rel: str, local: Path) -> None:
        """Stream a local file into storage (no copy of it in memory); readers see the old
        object or the whole new one."""
        with self._writing(rel) as (final, tmp):
            pafs.copy_files(str(local), tmp, pafs.LocalFileSystem(), self.fs, use_threads=False)
            if self.is_local:
                os.replace(tmp, final)

    def download(self, rel: str, dest: Path) -> None:
        """Stream the object into the local file ``dest``, which appears only when complete."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}")
        pafs.copy_files(self.path(rel), str(tmp), self.fs, pafs.LocalFileSystem(),
                        use_threads=False)
        os.replace(tmp, dest)

    def local_copy(self, rel: str, dest: Path) -> Path:
        """A local file with the object's bytes (the object itself for local storage)."""
        if self.is_local:
            return Path(self.path(rel))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(self.read_bytes(rel))
        return dest

    # ---- conditional writes (leases) ----------------------------------------------------------
    # A version names one state of an object: its SHA-256 on a file system, its ETag on S3.

    @cached_property
    def _s3(self):
        return s3_client(self._settings_uri)

    def _bucket_key(self, rel: str) -> tuple[str, str]:
        bucket, _, key = self.path(rel).partition("/")
        return bucket, key

    def _lock(self, rel: str):
        """The advisory lock every conditional writer of ``rel`` on a file system holds: one of
        256 under ``.locks/`` (by the path's hash), so that the sweep's folders hold no lock
        file per conditionally written file (an added trial each); two paths sharing a lock
        only take turns."""
        from filelock import FileLock

        folder = f"{self.root}/.locks"
        os.makedirs(folder, exist_ok=True)
        stripe = hashlib.sha256(rel.encode()).hexdigest()[:2]
        return FileLock(f"{folder}/{stripe}.lock", timeout=60)

    def read_versioned(self, rel: str) -> tuple[bytes | None, str | None]:
        """The object's bytes and version; (None, None) when there is none."""
        if self.is_local:
            try:
                with open(self.path(rel), "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                return None, None
            return data, hashlib.sha256(data).hexdigest()
        from botocore.exceptions import ClientError

        bucket, key = self._bucket_key(rel)
        try:
            r = self._s3.get_object(Bucket=bucket, Key=key)
        except ClientError as e:
            if _missing(e):
                return None, None
            raise
        return r["Body"].read(), r["ETag"]

    def write_if(self, rel: str, data: bytes, version: str | None) -> str:
        """Write ``data`` only if the object is at ``version`` (None: only if there is none);
        returns the new version. The storage decides, atomically: WriteConflict otherwise."""
        if self.is_local:
            with self._lock(rel):
                if self.read_versioned(rel)[1] != version:
                    raise WriteConflict(self.uri_of(rel))
                self.write_bytes(rel, data)
            return hashlib.sha256(data).hexdigest()
        condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        bucket, key = self._bucket_key(rel)
        try:
            return self._s3.put_object(Bucket=bucket, Key=key, Body=data, **condition)["ETag"]
        except Exception as e:
            if _refused(e):
                raise WriteConflict(self.uri_of(rel)) from None
            raise

    def missing_conditional_writes(self) -> list[str]:
        """The conditional writes this storage does not enforce, proven with a probe object of
        its own (deleted after): a second create under ``If-None-Match: *``, a replacement
        under ``If-Match`` with a stale version, and one under ``If-Match`` of an object that is
        gone must each be refused. [] where all are (a file system: compare-and-rename under
        this module's own lock, nothing to probe)."""
        if self.is_local:
            return []
        from botocore.exceptions import ClientError

        rel, missing = f".kdsweep-probe-{uuid.uuid4().hex}", []

        def refused(version: str | None, data: bytes) -> bool:
            try:
                self.write_if(rel, data, version)
            except WriteConflict:
                return True
            except ClientError as e:  # 501 NotImplemented, 400 on an unknown header...
                if e.response.get("Error", {}).get("Code") in ("AccessDenied", "NoSuchBucket"):
                    raise
                return False
            return False

        try:
            first = self.write_if(rel, b"1", None)
            if not refused(None, b"2"):
                missing.append("If-None-Match: * (create only if absent)")
            self.write_bytes(rel, b"3")  # a new version: ``first`` is now stale
            if not refused(first, b"4"):
                missing.append("If-Match (replace only the version last seen)")
            self.delete(rel)
            if not refused(first, b"5"):
                missing.append("If-Match on a deleted object")
        finally:
            self.delete(rel)
        return missing

    def delete_if(self, rel: str, version: str) -> bool:
        """Delete the object only if it is at ``version``; False when it is not (or gone)."""
        if self.is_local:
            with self._lock(rel):
                if self.read_versioned(rel)[1] != version:
                    return False
                os.unlink(self.path(rel))
            return True
        bucket, key = self._bucket_key(rel)
        try:
            self._s3.delete_object(Bucket=bucket, Key=key, IfMatch=version)
        except Exception as e:
            if _refused(e):
                return False
            raise
        return True


NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "ceph", "glusterfs", "9p")


def _network_mount(path: str) -> bool:
    """Whether ``path`` lies on a network file system (the longest mount point above it in
    /proc/mounts; a FUSE mount such as s3fs or gcsfuse counts)."""
    best, kind = "", ""
    with contextlib.suppress(OSError), open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and (path + "/").startswith(parts[1].rstrip("/") + "/") \
                        and len(parts[1]) >= len(best):
                best, kind = parts[1], parts[2]
    return kind in NETWORK_FS or kind.startswith("fuse.")


def _ns(when) -> int:
    """An S3 time (datetime) in ns, to the second: a listing gives milliseconds, a HEAD whole
    seconds, and the same object must stamp the same either way."""
    return int(when.timestamp()) * 10**9


def _missing(e: Exception) -> bool:
    """An S3 error that says there is no such object."""
    from botocore.exceptions import ClientError

    if not isinstance(e, ClientError):
        return False
    code = e.response.get("Error", {}).get("Code")
    return code in ("NoSuchKey", "404", "NotFound")


def _refused(e: Exception) -> bool:
    """An S3 error that says a condition did not hold (412; 409 for a concurrent conditional
    write; 404 for If-Match on an object that is gone)."""
    from botocore.exceptions import ClientError

    if not isinstance(e, ClientError):
        return False
    code = e.response.get("Error", {}).get("Code")
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey") or (
        status in (404, 409, 412))
