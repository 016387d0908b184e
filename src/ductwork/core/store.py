"""The artifact store: content-addressed objects that describe themselves.

Layout under the store root (default ``<project>/.ductwork``)::

    objects/<sha256>.parquet   a table (Parquet, zstd): schema and row count in its footer
    objects/<sha256>.json      a json artifact
    objects/<sha256>.txt       a text artifact
    objects/<sha256>/          a file-set artifact (directory; sha over paths and contents)
    tmp/                       work in progress (never read by anyone else)

A payload is written to ``tmp/``, fsynced, hashed, then renamed to its final name (atomic), so
a payload at its final name is always whole. Each artifact's manifest (type, schema, rows,
bytes, sha256, producer stage, run id) is a row of the run records, committed with the stage
run and its cache entry in one transaction after all the stage's outputs are in place. A crash
at any point leaves either nothing visible or everything: a stage without a committed cache
entry is re-run, and an entry whose objects are gone is ignored. Identical content is stored
once. The layout is flat: local filesystems index large directories, object stores have none.

With ``DUCTWORK_STORE=s3://bucket/prefix`` (any fsspec URL) the objects live in an object store
(:mod:`ductwork.core.remote`) and this local directory keeps the scratch space, the embedded
databases and a read cache of remote objects (``cache/objects/``); see docs/object-store.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import time
import uuid
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from ductwork.core.contract import ArtifactInfo, ArtifactType
from ductwork.core.fingerprint import tree_digest
from ductwork.errors import StoreError

if TYPE_CHECKING:
    import polars as pl

    from ductwork.config import Settings

# A fixed row-group size makes Parquet bytes independent of how the frame is chunked in memory.
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "statistics": True,
    "row_group_size": 262_144,
}
SUFFIX: dict[str, str] = {"table": ".parquet", "json": ".json", "text": ".txt", "files": ""}


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.read_metadata(path).num_rows)


def _replace(src: Path, dst: Path) -> None:
    """os.replace, making the target's directory on first use (no mkdir call per write)."""
    try:
        os.replace(src, dst)
    except FileNotFoundError:
        if not src.exists():
            raise
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)


class _HashingWriter(io.RawIOBase):
    """A write-only file wrapper that computes the sha256 of what goes through it."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.sha256.update(b)
        self.size += len(b)
        return self._f.write(b)

    def flush(self) -> None:
        self._f.flush()


@dataclass(frozen=True)
class CacheEntry:
    """What a successful stage run left behind, keyed by its fingerprint."""

    fingerprint: str
    stage: str
    kind: str
    run_id: str
    outputs: dict[str, ArtifactInfo]
    components: dict[str, Any]
    metrics: dict[str, Any]
    rows_in: int | None
    rows_out: int | None
    duration_s: float
    created: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "stage": self.stage,
            "kind": self.kind,
            "run_id": self.run_id,
            "outputs": {k: v.to_dict() for k, v in self.outputs.items()},
            "components": self.components,
            "metrics": self.metrics,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "duration_s": self.duration_s,
            "created": self.created,
        }


class Store:
    """A local content-addressed artifact store (object stores: :class:`RemoteStore`)."""

    url: str = ""  # a remote store's URL (without credentials); "" for a local store

    def __init__(self, root: str | os.PathLike[str], *, objects_dir: str = "objects") -> None:
        self.root = Path(root).absolute()
        self.objects = self.root / objects_dir
        self.tmp = self.root / "tmp"
        for d in (self.objects, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        gitignore = self.root / ".gitignore"
        if not gitignore.exists():
            with contextlib.suppress(OSError):
                gitignore.write_text("*\n")

    # -- paths ------------------------------------------------------------------------------
    def object_path(self, sha: str, type_: ArtifactType) -> Path:
        return self.objects / f"{sha}{SUFFIX[type_]}"

    def new_tmp_path(self, suffix: str = "") -> Path:
        return self.tmp / f"{uuid.uuid4().hex}{suffix}"

    @contextlib.contextmanager
    def tmp_dir(self) -> Iterator[Path]:
        """A fresh scratch path (not created: StageContext makes it on first use), removed after."""
        d = self.new_tmp_path()
        try:
            yield d
        finally:
            if d.exists():
                shutil.rmtree(d, ignore_errors=True)

    # -- writing ----------------------------------------------------------------------------
    def put_table(self, value: pl.DataFrame | pl.LazyFrame) -> ArtifactInfo:
        """Write a table as Parquet (zstd). The same rows always give the same bytes.

        Polars' Parquet pages otherwise follow the in-memory chunk layout, which depends on
        thread timing (a sort, a parallel join), so the row-group size is fixed: then a
        streaming sink and an in-memory write of equal rows give identical files, and identical
        data keeps its sha256 -> downstream stages stay cached. LazyFrames are streamed to disk.
        """
        import polars as pl

        tmp = self.new_tmp_path(".parquet")
        try:
            with open(tmp, "wb") as f:
                out = _HashingWriter(f)  # hashed as written: no second pass over the file
                sink = cast(BinaryIO, out)
                if isinstance(value, pl.LazyFrame):
                    value.sink_parquet(sink, **PARQUET_OPTIONS)
                else:
                    value.write_parquet(sink, **PARQUET_OPTIONS)
                f.flush()
                os.fsync(f.fileno())
            if isinstance(value, pl.LazyFrame):
                schema = {k: str(v) for k, v in pl.read_parquet_schema(tmp).items()}
                rows = _parquet_rows(tmp)
            else:
                schema = {k: str(v) for k, v in value.schema.items()}
                rows = value.height
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self._publish_file(
            tmp, "table", rows, schema, digest=(out.sha256.hexdigest(), out.size)
        )

    def put_json(self, value: Any) -> ArtifactInfo:
        data = json.dumps(value, sort_keys=True, indent=1, default=str, allow_nan=False).encode()
        return self._put_bytes(data, "json", ".json")

    def put_text(self, value: str) -> ArtifactInfo:
        return self._put_bytes(value.encode("utf-8"), "text", ".txt")

    def put_files(self, directory: Path) -> ArtifactInfo:
        """Move a directory the stage made into the store as a file-set artifact."""
        sha = tree_digest(directory)
        size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
        target = self.object_path(sha, "files")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            staged = self.new_tmp_path()
            shutil.copytree(directory, staged)
            for p in staged.rglob("*"):
                if p.is_file():
                    with open(p, "rb") as f:
                        os.fsync(f.fileno())
            try:
                os.rename(staged, target)
            except OSError:
                shutil.rmtree(staged, ignore_errors=True)
                if not target.exists():
                    raise
        return ArtifactInfo(sha256=sha, type="files", bytes=size, path=str(target))

    def _put_bytes(self, data: bytes, type_: ArtifactType, suffix: str) -> ArtifactInfo:
        tmp = self.new_tmp_path(suffix)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        digest = (hashlib.sha256(data).hexdigest(), len(data))
        return self._publish_file(tmp, type_, None, None, digest=digest)

    def _publish_file(
        self,
        tmp: Path,
        type_: ArtifactType,
        rows: int | None,
        schema: dict[str, str] | None,
        *,
        digest: tuple[str, int],
    ) -> ArtifactInfo:
        """Rename a complete, fsynced temp file to its content address."""
        sha, size = digest
        target = self.object_path(sha, type_)
        if target.exists():
            tmp.unlink(missing_ok=True)  # same content already stored
        else:
            _replace(tmp, target)
        return ArtifactInfo(
            sha256=sha, type=type_, bytes=size, rows=rows, schema=schema, path=str(target)
        )

    # -- reading ----------------------------------------------------------------------------
    def find(self, sha: str) -> ArtifactInfo | None:
        """Describe an artifact from its payload alone (type from the name, Parquet footer)."""
        types: tuple[ArtifactType, ...] = ("table", "json", "text", "files")
        for type_ in types:
            path = self.object_path(sha, type_)
            if path.exists():
                break
        else:
            return None
        rows = schema = None
        if type_ == "table":
            import polars as pl

            schema = {k: str(v) for k, v in pl.read_parquet_schema(path).items()}
            rows = _parquet_rows(path)
        size = (
            path.stat().st_size
            if path.is_file()
            else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        )
        return ArtifactInfo(
            sha256=sha, type=type_, bytes=size, rows=rows, schema=schema, path=str(path)
        )

    def info(self, sha: str) -> ArtifactInfo:
        found = self.find(sha)
        if found is None:
            msg = f"artifact {sha[:12]} is not in the store {self.root}"
            raise StoreError(
                msg, hint="It was garbage-collected or never written; run the pipeline again."
            )
        return found

    def _info_from(self, raw: Mapping[str, Any]) -> ArtifactInfo:
        sha = raw["sha256"]
        type_: ArtifactType = raw["type"]
        return ArtifactInfo(
            sha256=sha,
            type=type_,
            bytes=raw.get("bytes", 0),
            rows=raw.get("rows"),
            schema=raw.get("schema"),
            path=str(self.object_path(sha, type_)),
        )

    def has(self, sha: str, type_: ArtifactType) -> bool:
        """A payload at its final name is complete: it is renamed there only after its fsync."""
        return self.object_path(sha, type_).exists()

    def resolve_prefix(self, prefix: str) -> str:
        """Full sha256 for an unambiguous prefix (at least 4 hex digits)."""
        if len(prefix) == 64:
            return prefix
        if len(prefix) < 4:
            msg = f"artifact id '{prefix}' is too short: give at least 4 characters"
            raise StoreError(msg)
        matches = {p.name.split(".")[0] for p in self.objects.glob(f"{prefix}*")}
        if len(matches) != 1:
            what = "no artifact" if not matches else f"{len(matches)} artifacts"
            msg = f"{what} match '{prefix}'"
            raise StoreError(msg)
        return matches.pop()

    # -- the stage cache (entries live in the run records; the store checks their objects) --
    def entry_from_dict(self, raw: Mapping[str, Any]) -> CacheEntry | None:
        """A cache entry whose output objects are all present, else None (re-run the stage)."""
        outputs = {name: self._info_from(o) for name, o in raw["outputs"].items()}
        if not all(self.has(o.sha256, o.type) for o in outputs.values()):
            return None
        return CacheEntry(
            fingerprint=raw["fingerprint"],
            stage=raw["stage"],
            kind=raw["kind"],
            run_id=raw["run_id"],
            outputs=outputs,
            components=raw.get("components", {}),
            metrics=raw.get("metrics", {}),
            rows_in=raw.get("rows_in"),
            rows_out=raw.get("rows_out"),
            duration_s=raw.get("duration_s", 0.0),
            created=raw.get("created", 0.0),
        )

    def iter_objects(self) -> Iterator[tuple[str, PurePath]]:
        """(sha256, object) for every stored object (a remote store lists its remote ones)."""
        return self._local_objects()

    def _local_objects(self) -> Iterator[tuple[str, Path]]:
        for p in self.objects.iterdir():
            yield p.name.split(".")[0], p

    def localize(self, info: ArtifactInfo) -> ArtifactInfo:
        """The artifact with a path on this machine: a local store's objects already are."""
        return info

    # -- garbage collection -----------------------------------------------------------------
    def gc(
        self, keep: set[str], *, dry_run: bool = False, tmp_age_s: float = 3600.0
    ) -> dict[str, int]:
        """Delete objects not in ``keep``, and scratch files older than ``tmp_age_s``."""
        removed_objects = removed_bytes = 0
        for sha, path in list(self._local_objects()):  # of a remote store: its read cache
            if sha in keep:
                continue
            removed_objects += 1
            if path.is_dir():
                removed_bytes += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
                if not dry_run:
                    shutil.rmtree(path, ignore_errors=True)
            else:
                removed_bytes += path.stat().st_size
                if not dry_run:
                    path.unlink(missing_ok=True)
        now = time.time()
        for p in list(self.tmp.iterdir()):
            if now - p.stat().st_mtime > tmp_age_s and not dry_run:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        return {"objects_removed": removed_objects, "bytes_removed": removed_bytes}


# Stores opened by open_store in this process, so stages run in this process (inline and thread
# executors) use the very store the runner opened, settings and credentials included.
_OPEN: weakref.WeakValueDictionary[tuple[str, str], Store] = weakref.WeakValueDictionary()
_WORKER: dict[tuple[str, str], Store] = {}


def open_store(
    root: str | os.PathLike[str], url: str = "", settings: Settings | None = None
) -> Store:
    """The project's store: local at ``root``, or the object store at ``url`` cached in ``root``.

    A local store never imports fsspec; an object store needs its filesystem package (s3fs for
    ``s3://``), imported here and only here.
    """
    if not url:
        return Store(root)
    from ductwork.core.remote import RemoteStore

    store = RemoteStore.open(root, url, settings)
    _OPEN[(str(store.root), store.url)] = store
    return store


def task_store(root: str, url: str, project_dir: str | os.PathLike[str]) -> Store:
    """The store a stage task writes to, in whichever process runs it.

    In the runner's process that is the store the runner opened. A worker process (a process
    pool, a Ray worker on another machine) opens it from its own settings: the object store's
    endpoint and credentials come from that machine's environment (or the project's ``.env``),
    never through the task, which may be pickled, logged or shipped to another machine.
    """
    if not url:
        return Store(root)
    key = (str(Path(root).absolute()), url)
    found = _OPEN.get(key) or _WORKER.get(key)
    if found is None:
        from ductwork.config import load_settings

        found = _WORKER[key] = open_store(root, url, load_settings(Path(project_dir)))
    return found
