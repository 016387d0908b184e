"""The artifact store: content-addressed objects, their manifests and the stage cache.

Layout under the store root (default ``<project>/.ductwork``)::

    objects/<sha256>.parquet|.json|.txt   payload, named by the sha256 of its content
    objects/<sha256>/                     a file-set artifact (directory)
    objects/<sha256>.manifest.json        type, schema, rows, bytes, sha256, producer
    cache/<fingerprint>.json              stage cache entry: fingerprint -> output shas
    tmp/                                  work in progress (never read by anyone else)

Publication order makes every crash safe: the payload is written to ``tmp/`` and fsynced,
renamed into ``objects/`` (atomic), then its manifest is written (tmp + rename), then — after all
outputs of a stage — the cache entry (tmp + fsync + rename). An object without a manifest is
invisible; a stage without a cache entry is re-run; a manifest that a power loss truncated is
read as missing. Identical content written twice is stored once. The layout is flat (no
fan-out directories): local filesystems index large directories, object stores have none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ductwork.core.contract import ArtifactInfo, ArtifactType
from ductwork.core.fingerprint import tree_digest
from ductwork.errors import StoreError

if TYPE_CHECKING:
    import polars as pl

SUFFIX: dict[str, str] = {"table": ".parquet", "json": ".json", "text": ".txt", "files": ""}
_CHUNK = 1 << 20


def _hash_and_sync(path: Path) -> tuple[str, int]:
    """sha256 and size of a file, and fsync it, in one read."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb+") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
        os.fsync(f.fileno())
    return h.hexdigest(), size


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


def atomic_write_bytes(path: Path, data: bytes, tmp_dir: Path | None = None, *, fsync: bool = True) -> None:
    """Write a file so readers see either the old or the whole new content.

    The content is fsynced before the rename, so a crash leaves the old file or the whole new
    one. The directory is not fsynced: after a power loss a rename may be lost, and the store
    treats a lost object as missing (the stage is re-run), never as corrupt.
    """
    tmp = (tmp_dir or path.parent) / f".{path.name}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    _replace(tmp, path)


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
    """A local content-addressed artifact store (object stores follow through fsspec)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self.objects = self.root / "objects"
        self.cache_dir = self.root / "cache"
        self.tmp = self.root / "tmp"
        for d in (self.objects, self.cache_dir, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        gitignore = self.root / ".gitignore"
        if not gitignore.exists():
            with contextlib.suppress(OSError):
                gitignore.write_text("*\n")

    # -- paths ------------------------------------------------------------------------------
    def object_path(self, sha: str, type_: ArtifactType) -> Path:
        return self.objects / f"{sha}{SUFFIX[type_]}"

    def manifest_path(self, sha: str) -> Path:
        return self.objects / f"{sha}.manifest.json"

    def cache_path(self, fingerprint: str) -> Path:
        return self.cache_dir / f"{fingerprint}.json"

    def new_tmp_path(self, suffix: str = "") -> Path:
        return self.tmp / f"{uuid.uuid4().hex}{suffix}"

    @contextlib.contextmanager
    def tmp_dir(self) -> Iterator[Path]:
        d = self.new_tmp_path()
        d.mkdir()
        try:
            yield d
        finally:
            try:
                d.rmdir()  # the common case: the stage left nothing behind
            except OSError:
                shutil.rmtree(d, ignore_errors=True)

    # -- writing ----------------------------------------------------------------------------
    def put_table(self, value: pl.DataFrame | pl.LazyFrame, producer: Mapping[str, Any]) -> ArtifactInfo:
        import polars as pl

        tmp = self.new_tmp_path(".parquet")
        try:
            if isinstance(value, pl.LazyFrame):
                value.sink_parquet(tmp, compression="zstd", statistics=True)
            else:
                value.write_parquet(tmp, compression="zstd", statistics=True)
            schema = {k: str(v) for k, v in pl.read_parquet_schema(tmp).items()}
            rows = _parquet_rows(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self._publish_file(tmp, "table", rows, schema, producer)

    def put_json(self, value: Any, producer: Mapping[str, Any]) -> ArtifactInfo:
        data = json.dumps(value, sort_keys=True, indent=1, default=str, allow_nan=False).encode()
        return self._put_bytes(data, "json", ".json", producer)

    def put_text(self, value: str, producer: Mapping[str, Any]) -> ArtifactInfo:
        return self._put_bytes(value.encode("utf-8"), "text", ".txt", producer)

    def put_files(self, directory: Path, producer: Mapping[str, Any]) -> ArtifactInfo:
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
        info = ArtifactInfo(sha256=sha, type="files", bytes=size, path=str(target))
        self._write_manifest(info, producer)
        return info

    def _put_bytes(
        self, data: bytes, type_: ArtifactType, suffix: str, producer: Mapping[str, Any]
    ) -> ArtifactInfo:
        tmp = self.new_tmp_path(suffix)
        with open(tmp, "wb") as f:
            f.write(data)
        return self._publish_file(tmp, type_, None, None, producer)

    def _publish_file(
        self,
        tmp: Path,
        type_: ArtifactType,
        rows: int | None,
        schema: dict[str, str] | None,
        producer: Mapping[str, Any],
    ) -> ArtifactInfo:
        sha, size = _hash_and_sync(tmp)
        target = self.object_path(sha, type_)
        if target.exists():
            tmp.unlink(missing_ok=True)  # same content already stored
        else:
            _replace(tmp, target)
        info = ArtifactInfo(sha256=sha, type=type_, bytes=size, rows=rows, schema=schema, path=str(target))
        self._write_manifest(info, producer)
        return info

    def _write_manifest(self, info: ArtifactInfo, producer: Mapping[str, Any]) -> None:
        path = self.manifest_path(info.sha256)
        if path.exists() and path.stat().st_size > 0:
            return
        manifest = {**info.to_dict(), "producer": dict(producer), "created": time.time()}
        atomic_write_bytes(path, json.dumps(manifest, sort_keys=True).encode(), self.tmp, fsync=False)

    # -- reading ----------------------------------------------------------------------------
    def info(self, sha: str) -> ArtifactInfo:
        """The manifest of an artifact; a missing or unreadable one is a StoreError."""
        try:
            raw = json.loads(self.manifest_path(sha).read_bytes())
        except (OSError, ValueError):
            msg = f"artifact {sha[:12]} is not in the store {self.root}"
            raise StoreError(msg, hint="Run the pipeline again to rebuild it.") from None
        return self._info_from(raw)

    def manifest(self, sha: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.manifest_path(sha).read_bytes())
        except FileNotFoundError:
            msg = f"artifact {sha[:12]} is not in the store {self.root}"
            raise StoreError(msg) from None
        return data

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
        return self.manifest_path(sha).exists() and self.object_path(sha, type_).exists()

    def resolve_prefix(self, prefix: str) -> str:
        """Full sha256 for an unambiguous prefix (at least 4 hex digits)."""
        if len(prefix) == 64:
            return prefix
        if len(prefix) < 4:
            msg = f"artifact id '{prefix}' is too short: give at least 4 characters"
            raise StoreError(msg)
        matches = {p.name.split(".")[0] for p in self.objects.glob(f"{prefix}*.manifest.json")}
        if len(matches) != 1:
            what = "no artifact" if not matches else f"{len(matches)} artifacts"
            msg = f"{what} match '{prefix}'"
            raise StoreError(msg)
        return matches.pop()

    # -- the stage cache --------------------------------------------------------------------
    def read_cache(self, fingerprint: str) -> CacheEntry | None:
        """The cache entry for a fingerprint if it and all its outputs are in the store."""
        try:
            raw = json.loads(self.cache_path(fingerprint).read_bytes())
        except (FileNotFoundError, ValueError):
            return None
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

    def write_cache(self, entry: CacheEntry) -> None:
        data = json.dumps(entry.to_dict(), sort_keys=True, default=str).encode()
        atomic_write_bytes(self.cache_path(entry.fingerprint), data, self.tmp)

    def iter_cache(self) -> Iterator[dict[str, Any]]:
        for p in self.cache_dir.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                yield json.loads(p.read_bytes())

    def iter_manifests(self) -> Iterator[dict[str, Any]]:
        for p in self.objects.glob("*.manifest.json"):
            with contextlib.suppress(OSError, ValueError):
                yield json.loads(p.read_bytes())

    # -- garbage collection -----------------------------------------------------------------
    def gc(self, keep: set[str], *, dry_run: bool = False, tmp_age_s: float = 3600.0) -> dict[str, int]:
        """Delete objects not in ``keep`` and cache entries pointing at deleted objects."""
        removed_objects = removed_bytes = removed_cache = 0
        for manifest in list(self.iter_manifests()):
            sha = manifest["sha256"]
            if sha in keep:
                continue
            removed_objects += 1
            removed_bytes += int(manifest.get("bytes") or 0)
            if not dry_run:
                self.manifest_path(sha).unlink(missing_ok=True)  # invisible first
                target = self.object_path(sha, manifest["type"])
                if target.is_dir():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)
        for entry in list(self.iter_cache()):
            shas = {o["sha256"] for o in entry.get("outputs", {}).values()}
            if not shas <= keep:
                removed_cache += 1
                if not dry_run:
                    self.cache_path(entry["fingerprint"]).unlink(missing_ok=True)
        # payloads whose manifest was never written (a crash between the two) and old tmp files
        now = time.time()
        for p in list(self.objects.iterdir()):
            if p.name.endswith(".manifest.json"):
                continue
            sha = p.name.split(".")[0]
            if sha not in keep and not self.manifest_path(sha).exists():
                age = now - p.stat().st_mtime
                if age > tmp_age_s and not dry_run:
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        for p in list(self.tmp.iterdir()):
            if now - p.stat().st_mtime > tmp_age_s and not dry_run:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        return {
            "objects_removed": removed_objects,
            "bytes_removed": removed_bytes,
            "cache_entries_removed": removed_cache,
        }
