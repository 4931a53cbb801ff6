"""Where the project keeps files: local folders or object storage, and writes that never leave a
half-written result that looks complete.

**Locations.** Every place a user names (`data.root`, `train.storage_path`, a checkpoint) goes
through `location(value)`: a local path gives a `pathlib.Path`, exactly as before; a URI
(`s3://bucket/prefix`, `gs://...`) gives an `ObjectPath`, which offers the part of `Path`'s API the
project uses (`/`, `name`, `parent`, `is_file`, `iterdir`, `read_text`, ...) over a
`pyarrow.fs` filesystem (the one Ray Train uses for its `storage_path`). `resolve(value)` gives
that filesystem and the path in it. Endpoint and credentials come the standard way, from the
environment (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_DEFAULT_REGION`; pyarrow reads them), or as URI options (`s3://b/p?endpoint_override=...`).

**Atomic writes.** Every folder written as a unit (a checkpoint, a code-table snapshot, a prepared
dataset) goes through `atomic_folder`. Locally its contents are written into a hidden scratch
folder beside the target, flushed and renamed into place in one step: readers see the previous
folder or the complete new one. Object stores have no rename: the folder is written into a local
temporary folder, then uploaded file by file, its *marker* files last (`manifest.json`,
`meta.json`, `header.json`: readers take a folder as complete only when its marker is there). An
upload cut short leaves a folder without its marker, which every reader skips. Single files go
through `atomic_write_text`: a rename locally, one PUT (atomic in S3) remotely.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from acn_dist.errors import ConfigError

MARKERS = ("manifest.json", "meta.json", "header.json")  # uploaded last: they mark a folder complete


def is_uri(value: Any) -> bool:
    """Whether `value` names object storage (`scheme://...`, `file://` excepted)."""
    if isinstance(value, ObjectPath):
        return True
    text = str(value)
    return "://" in text and not text.startswith("file://")


@functools.lru_cache(maxsize=16)
def _filesystem(scheme: str, bucket: str, query: str, environment: tuple[tuple[str, str], ...],
                pid: int) -> pafs.FileSystem:
    """One filesystem per bucket (and per credentials in the environment), reused by every path
    of one process: a forked loader worker opens its own (never its parent's connections)."""
    uri = f"{scheme}://{bucket}" + (f"?{query}" if query else "")
    try:
        filesystem, _ = pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{uri}: cannot open this object store ({error}); check the URI, the endpoint "
                          "(AWS_ENDPOINT_URL) and the credentials (AWS_ACCESS_KEY_ID, ...)") from None
    return filesystem


def _cloud_environment() -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(("AWS_", "GOOGLE_"))))


@dataclass(frozen=True)
class ObjectStat:
    st_size: int
    st_mtime_ns: int


@dataclass(frozen=True)
class ObjectPath:
    """A file or folder in object storage, named like a path: `scheme://bucket/key...`."""

    scheme: str
    path: str  # the pyarrow path: "bucket/key/..." without a trailing slash
    query: str = ""  # URI options for the filesystem (endpoint_override=...), kept on every child

    @classmethod
    def parse(cls, uri: str) -> ObjectPath:
        parts = urlsplit(uri)
        if not parts.netloc:
            raise ConfigError(f"{uri!r}: an object-storage URI needs a bucket (scheme://bucket/prefix)")
        return cls(parts.scheme, f"{parts.netloc}/{parts.path.strip('/')}".rstrip("/"), parts.query)

    # --- naming -----------------------------------------------------------------------------

    def __str__(self) -> str:
        return f"{self.scheme}://{self.path}" + (f"?{self.query}" if self.query else "")

    def __truediv__(self, other: str | Path) -> ObjectPath:
        child = str(other).strip("/")
        return ObjectPath(self.scheme, f"{self.path}/{child}" if child else self.path, self.query)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.scheme, self.path.rsplit("/", 1)[0], self.query) if "/" in self.path else self

    @property
    def bucket(self) -> str:
        return self.path.split("/", 1)[0]

    def resolve(self) -> ObjectPath:
        return self

    @property
    def filesystem(self) -> pafs.FileSystem:
        return _filesystem(self.scheme, self.bucket, self.query, _cloud_environment(), os.getpid())

    # --- queries ----------------------------------------------------------------------------

    def info(self) -> pafs.FileInfo:
        return self.filesystem.get_file_info(self.path)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def stat(self) -> ObjectStat:
        info = self.info()
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(str(self))
        return ObjectStat(int(info.size or 0), int(info.mtime_ns or 0))

    def iterdir(self) -> Iterator[ObjectPath]:
        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=False)
        for info in self.filesystem.get_file_info(selector):
            yield ObjectPath(self.scheme, info.path.rstrip("/"), self.query)

    # --- reading and writing ----------------------------------------------------------------

    def open(self, mode: str = "rb") -> IO[bytes]:
        if mode == "rb":
            return self.filesystem.open_input_stream(self.path)
        if mode == "wb":
            return self.filesystem.open_output_stream(self.path)
        raise ValueError(f"{self}: mode {mode!r}; object storage opens files 'rb' or 'wb' only")

    def read_bytes(self) -> bytes:
        try:
            with self.open("rb") as handle:
                return handle.read()
        except FileNotFoundError:
            raise
        except OSError as error:
            if not self.exists():
                raise FileNotFoundError(str(self)) from error
            raise

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> int:
        with self.open("wb") as handle:
            handle.write(data)
        return len(data)

    def write_text(self, text: str) -> int:
        return self.write_bytes(text.encode())

    def upload(self, local_file: Path) -> None:
        with open(local_file, "rb") as source, self.open("wb") as target:
            shutil.copyfileobj(source, target, 8 << 20)

    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        """Nothing to do: a prefix exists once an object is written under it."""

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.filesystem.delete_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise


AnyPath = Path | ObjectPath


def location(value: str | Path | ObjectPath) -> AnyPath:
    """`Path` for a local path (`file://` URIs included), `ObjectPath` for object storage."""
    if isinstance(value, (Path, ObjectPath)):
        return value
    text = str(value)
    if text.startswith("file://"):
        return Path(urlsplit(text).path)
    return ObjectPath.parse(text) if is_uri(text) else Path(text)


def check_bucket(where: ObjectPath, key: str) -> None:
    """Refuse object storage whose bucket is missing or cannot be reached."""
    bucket = ObjectPath(where.scheme, where.bucket, where.query)
    try:
        found = bucket.info().type != pafs.FileType.NotFound
    except OSError as error:
        raise ConfigError(f"{key}={str(where)!r}: bucket {where.bucket!r} cannot be reached ({error}); check "
                          "AWS_ENDPOINT_URL and the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)") from None
    if not found:
        raise ConfigError(f"{key}={str(where)!r}: bucket {where.bucket!r} does not exist at this endpoint; "
                          "create it first (acn_dist never creates buckets)")


def absolute(value: str | Path | ObjectPath) -> str:
    """The form of a location every process of a run understands: URIs as they are, local paths
    made absolute (Ray workers do not share the driver's working directory)."""
    where = location(value)
    return str(where) if isinstance(where, ObjectPath) else str(where.resolve())


def resolve(value: str | Path | ObjectPath) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem holding `value` and the path in it (local: the absolute path)."""
    where = location(value)
    if isinstance(where, ObjectPath):
        return where.filesystem, where.path
    return pafs.LocalFileSystem(), str(where.resolve())


def remove_tree(path: AnyPath) -> None:
    """Remove a folder and everything in it; a missing one is fine."""
    if isinstance(path, ObjectPath):
        try:
            path.filesystem.delete_dir(path.path)
        except FileNotFoundError:
            pass
    else:
        shutil.rmtree(path, ignore_errors=True)


def upload_folder(local: Path, target: ObjectPath) -> None:
    """Copy every file under `local` to the same relative key under `target`, markers last."""
    files = [p for p in local.rglob("*") if p.is_file()]
    for file in sorted(files, key=lambda p: (p.name in MARKERS, str(p))):
        (target / file.relative_to(local).as_posix()).upload(file)


@contextmanager
def staged_upload(target: ObjectPath) -> Iterator[Path]:
    """A local temporary folder to fill; when the block ends without error its files are
    uploaded under `target` (markers last), next to what is there already."""
    with tempfile.TemporaryDirectory(prefix="acn-upload-") as scratch:
        yield Path(scratch)
        upload_folder(Path(scratch), target)


@contextmanager
def output_folder(target: str | Path | ObjectPath) -> Iterator[Path]:
    """A local folder for a command's outputs (evaluation, export): `target` itself when it is
    local (created if missing); for object storage a staging folder whose files are uploaded under
    `target` when the block ends without error."""
    where = location(target)
    if isinstance(where, ObjectPath):
        with staged_upload(where) as scratch:
            yield scratch
    else:
        where.mkdir(parents=True, exist_ok=True)
        yield where


def scratch_name(target: Path, tag: str = "tmp") -> Path:
    """A hidden name beside `target`, unique to this process and moment."""
    return target.parent / f".{target.name}.{tag}-{os.getpid()}-{time.monotonic_ns()}"


def is_scratch(path: AnyPath) -> bool:
    """Scratch folders (hidden, `.<name>.tmp-...`) are never complete results."""
    return path.name.startswith(".")


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(folder: Path) -> None:
    """Flush every file of `folder` and the folder entries themselves to disk."""
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync(Path(root) / name)
        _fsync(Path(root))


def _remove_markers(target: ObjectPath) -> None:
    """Take the completeness markers of an object-store folder away first, so nobody reads it as
    complete while it is replaced."""
    selector = pafs.FileSelector(target.path, allow_not_found=True, recursive=True)
    for info in target.filesystem.get_file_info(selector):
        if info.type == pafs.FileType.File and info.base_name in MARKERS:
            target.filesystem.delete_file(info.path)


@contextmanager
def atomic_folder(target: str | Path | ObjectPath) -> Iterator[Path]:
    """Yield a local scratch folder to fill; when the block ends without error it replaces
    `target` (an existing `target` is swapped out and removed). On error the scratch folder is
    removed and `target` is untouched. For object storage see the module's docstring: the old
    folder's markers go first, then the old folder, then the upload, markers last."""
    target = location(target)
    if isinstance(target, ObjectPath):
        with tempfile.TemporaryDirectory(prefix="acn-upload-") as scratch:
            yield Path(scratch)
            if target.exists():
                _remove_markers(target)
                remove_tree(target)
            upload_folder(Path(scratch), target)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = scratch_name(target)
    scratch.mkdir()
    try:
        yield scratch
        fsync_tree(scratch)
        if target.exists():
            old = scratch_name(target, "old")
            os.replace(target, old)
            os.replace(scratch, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(scratch, target)
        _fsync(target.parent)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def atomic_write_text(path: str | Path | ObjectPath, text: str) -> AnyPath:
    """Write `text` to `path` through a scratch file and one rename (object storage: one PUT)."""
    path = location(path)
    if isinstance(path, ObjectPath):
        path.write_text(text)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = scratch_name(path)
    try:
        with open(scratch, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(scratch, path)
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise
    return path
