"""The artifact store in an object store: ``DUCTWORK_STORE=s3://bucket/prefix`` (any fsspec URL).

Remote layout under the URL::

    objects/<sha256>.parquet      a table            (one object; a PUT is atomic)
    objects/<sha256>.json         a json artifact
    objects/<sha256>.txt          a text artifact
    objects/<sha256>/<path>       the files of a file-set artifact ...
    objects/<sha256>.files.json   ... and its completion marker, written last

Writing stays local and unchanged: a stage's outputs are written, fsynced and hashed in the local
store directory, renamed into the read cache (``<local>/cache/objects/``), then *published*: a
HEAD skips content that is already there (dedup), else one create-only PUT (If-None-Match on
S3; "already exists" counts as success, since the same name means the same bytes). A file set
is many objects, so its marker, which lists the files and sizes, goes up last, and a file set
exists for readers only when its marker does. The runner commits the manifests (rows of the
run records) only after ``execute_stage`` has returned, i.e. after every output is published;
so a reader never meets a record whose objects are partial.

Reading goes to the object store (``has``, ``find``, ``resolve_prefix``, ``gc``); payloads are
downloaded on demand into the read cache (tmp + fsync + rename, sha256 verified), in the
process that needs them: a stage's inputs in the process running the stage. The cache is keyed
by content, so it never goes stale; ``gc`` trims it with the remote objects.

Credentials come from Settings (``DUCTWORK_S3_KEY``/``DUCTWORK_S3_SECRET``) or the usual AWS
chain. They live only inside the filesystem object: never in a task, a record, a fingerprint,
a repr or an error message (errors are scrubbed of them).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ductwork.core.contract import ArtifactInfo, ArtifactType
from ductwork.core.fingerprint import file_digest, tree_digest
from ductwork.core.store import SUFFIX, Store, _replace
from ductwork.errors import StoreError, UsageError, import_optional

if TYPE_CHECKING:
    from ductwork.config import Settings

# Protocols whose single PUT is atomic (the object appears whole or not at all). Elsewhere
# (file://, sftp://, ...) an upload goes to a temporary name first and is then moved.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"})
S3 = frozenset({"s3", "s3a"})
# How servers without If-None-Match support (or with a bare "412 Precondition Failed")
# answer a create-only PUT, as s3fs translates it: ENOSYS (501), EINVAL (400/412).
REFUSED_CONDITION = frozenset({errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP})
MARKER = ".files.json"
TABLE_TAIL = 64 * 1024  # one ranged GET reads a Parquet footer of up to this size
HINT = (
    "Check DUCTWORK_STORE, DUCTWORK_S3_ENDPOINT_URL, DUCTWORK_S3_REGION and the credentials "
    "(DUCTWORK_S3_KEY/DUCTWORK_S3_SECRET or the AWS_* variables), and that the bucket exists."
)


def storage_options(protocol: str, settings: Settings | None) -> dict[str, Any]:
    """fsspec options for a protocol from Settings; secrets are unwrapped only here."""
    opts: dict[str, Any] = {"use_listings_cache": False}  # other writers change the store
    if settings is None or protocol not in S3:
        return opts
    if settings.s3_key is not None and settings.s3_secret is not None:
        opts["key"] = settings.s3_key.get_secret_value()
        opts["secret"] = settings.s3_secret.get_secret_value()
    elif (settings.s3_key is None) != (settings.s3_secret is None):
        given = "DUCTWORK_S3_KEY" if settings.s3_key is not None else "DUCTWORK_S3_SECRET"
        msg = f"{given} is set without its pair"
        raise UsageError(
            msg,
            hint="Set both DUCTWORK_S3_KEY and DUCTWORK_S3_SECRET, or neither (then the AWS_* "
            "variables or the boto credential chain are used).",
        )
    if settings.s3_endpoint_url:
        opts["endpoint_url"] = settings.s3_endpoint_url
    if settings.s3_region:
        opts["client_kwargs"] = {"region_name": settings.s3_region}
    return opts


class RemoteStore(Store):
    """Artifacts in an object store, with the local directory as scratch space and read cache."""

    def __init__(
        self, root: str | os.PathLike[str], url: str, fs: Any, base: str, secrets: tuple[str, ...]
    ) -> None:
        super().__init__(root, objects_dir="cache/objects")
        self.url = url
        self.fs = fs
        self.base = base.rstrip("/")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self._s3 = protocol in S3
        self._atomic_put = protocol in OBJECT_STORES
        self._create_only = self._s3  # If-None-Match: "*"; dropped if the server refuses it
        self._secrets = tuple(s for s in secrets if s)

    @classmethod
    def open(
        cls, root: str | os.PathLike[str], url: str, settings: Settings | None = None
    ) -> RemoteStore:
        url = url.rstrip("/")
        parts = urlsplit(url)
        if "@" in parts.netloc:
            msg = f"the store URL '{parts.scheme}://…@{parts.netloc.rsplit('@', 1)[1]}' has credentials in it"
            raise UsageError(
                msg, hint="Put them in DUCTWORK_S3_KEY and DUCTWORK_S3_SECRET (or .env) instead."
            )
        protocol = parts.scheme.lower()
        feature = f"an {protocol}:// artifact store (DUCTWORK_STORE)"
        if protocol in S3:
            import_optional("s3fs", extra="s3", feature=feature)
        fsspec: Any = import_optional("fsspec", extra="s3", feature=feature)
        opts = storage_options(protocol, settings)
        secrets = tuple(str(opts.get(k, "")) for k in ("key", "secret"))
        try:
            fs, base = fsspec.core.url_to_fs(url, **opts)
        except ImportError as exc:  # fsspec knows the protocol, its package is missing
            msg = f"{feature} needs a package that is not installed: {exc}"
            raise StoreError(
                msg, hint="Install the fsspec implementation for the protocol."
            ) from exc
        except ValueError as exc:
            msg = f"DUCTWORK_STORE '{url}' is not a URL fsspec can open: {exc}"
            raise UsageError(msg, hint="Use s3://bucket/prefix or a local directory.") from exc
        if not str(base).strip("/"):
            msg = f"DUCTWORK_STORE '{url}' names no bucket"
            raise UsageError(msg, hint="Use s3://bucket or s3://bucket/prefix.")
        return cls(root, url, fs, str(base), secrets)

    def __repr__(self) -> str:
        return f"RemoteStore({self.url!r}, cache={str(self.root)!r})"

    # -- names ------------------------------------------------------------------------------
    def key(self, sha: str, type_: ArtifactType) -> str:
        """The remote name of an artifact (of a file set: its completion marker)."""
        if type_ == "files":
            return f"{self.base}/objects/{sha}{MARKER}"
        return f"{self.base}/objects/{sha}{SUFFIX[type_]}"

    def _files_prefix(self, sha: str) -> str:
        return f"{self.base}/objects/{sha}"

    # -- errors -----------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @contextlib.contextmanager
    def _remote(self, what: str) -> Iterator[None]:
        """Name the store and the operation in any error, never a credential."""
        try:
            yield
        except StoreError:
            raise
        except Exception as exc:
            detail = self._scrub(f"{type(exc).__name__}: {exc}".strip())
            msg = f"object store {self.url}: {what} failed: {detail}"
            raise StoreError(msg, hint=HINT) from None

    # -- low-level remote I/O ---------------------------------------------------------------
    def _exists(self, key: str) -> bool:
        with self._remote(f"checking {key}"):
            return bool(self.fs.exists(key))

    def _put(self, local: Path, key: str, *, create: bool = True) -> None:
        """Upload a whole file so that it appears at ``key`` whole or not at all."""
        with self._remote(f"uploading {key}"):
            if not self._atomic_put:
                staged = f"{self.base}/tmp/{uuid.uuid4().hex}"
                self.fs.makedirs(self.fs._parent(staged), exist_ok=True)
                self.fs.put_file(str(local), staged)
                self.fs.makedirs(self.fs._parent(key), exist_ok=True)
                self.fs.mv(staged, key)
                return
            if not (create and self._create_only):
                self.fs.put_file(str(local), key)
                return
            try:
                self.fs.put_file(str(local), key, mode="create")
            except FileExistsError:
                return  # another writer published the same content first
            except (NotImplementedError, TypeError, OSError) as exc:
                if isinstance(exc, OSError) and exc.errno not in REFUSED_CONDITION:
                    raise
                # a server without conditional writes (501), or one that answers "exists" with
                # a bare 412/400: a plain PUT of the same bytes under the same name is safe
                self._create_only = False
                self.fs.put_file(str(local), key)

    def _download(self, key: str, local: Path) -> None:
        with self._remote(f"downloading {key}"):
            try:
                self.fs.get_file(key, str(local))
            except FileNotFoundError:
                raise self._gone(key) from None

    def _gone(self, key: str) -> StoreError:
        name = PurePosixPath(key).name
        msg = f"artifact {name} is no longer in the object store {self.url}"
        return StoreError(
            msg, hint="It was garbage-collected after this run was planned; run the pipeline again."
        )

    # -- writing: local as before, then publish ---------------------------------------------
    def _publish_file(
        self,
        tmp: Path,
        type_: ArtifactType,
        rows: int | None,
        schema: dict[str, str] | None,
        *,
        digest: tuple[str, int],
    ) -> ArtifactInfo:
        info = super()._publish_file(tmp, type_, rows, schema, digest=digest)
        key = self.key(info.sha256, type_)
        if not self._exists(key):  # content-addressed: the same name holds the same bytes
            self._put(Path(info.path), key)
        return info

    def put_files(self, directory: Path) -> ArtifactInfo:
        info = super().put_files(directory)
        self._publish_files(info.sha256, Path(info.path))
        return info

    def _publish_files(self, sha: str, local: Path) -> None:
        """Upload every file of a file set, then its marker: the set exists once the marker does."""
        marker = self.key(sha, "files")
        if self._exists(marker):
            return
        prefix = self._files_prefix(sha)
        files = sorted(p for p in local.rglob("*") if p.is_file())
        listing: list[dict[str, Any]] = [
            {"path": p.relative_to(local).as_posix(), "bytes": p.stat().st_size} for p in files
        ]
        if files:
            with self._remote(f"uploading the files of {sha[:12]}"):
                keys = [f"{prefix}/{f['path']}" for f in listing]
                if self._atomic_put:
                    self.fs.put([str(p) for p in files], keys)  # concurrent on S3
                else:
                    for p, k in zip(files, keys, strict=True):
                        self._put(p, k, create=False)
        data = {"sha256": sha, "bytes": sum(f["bytes"] for f in listing), "files": listing}
        staged = self.new_tmp_path(MARKER)
        try:
            staged.write_text(json.dumps(data, sort_keys=True, indent=1), encoding="utf-8")
            self._put(staged, marker)
        finally:
            staged.unlink(missing_ok=True)

    # -- reading ----------------------------------------------------------------------------
    def has(self, sha: str, type_: ArtifactType) -> bool:
        """An object at its final remote name is whole (a PUT is atomic; a file set: its marker)."""
        return self._exists(self.key(sha, type_))

    def _marker(self, sha: str) -> dict[str, Any]:
        with self._remote(f"reading the marker of {sha[:12]}"):
            try:
                raw = self.fs.cat_file(self.key(sha, "files"))
            except FileNotFoundError:
                raise self._gone(self.key(sha, "files")) from None
        found: dict[str, Any] = json.loads(raw)
        return found

    def find(self, sha: str) -> ArtifactInfo | None:
        """Describe a remote artifact without downloading it (a table: its Parquet footer only)."""
        types: tuple[ArtifactType, ...] = ("table", "json", "text", "files")
        for type_ in types:
            key = self.key(sha, type_)
            with self._remote(f"checking {key}"):
                try:
                    meta = self.fs.info(key)
                except FileNotFoundError:
                    continue
            break
        else:
            return None
        local = self.object_path(sha, type_)
        rows = schema = None
        size = int(meta.get("size") or 0)
        if type_ == "files":
            size = int(self._marker(sha).get("bytes", 0))
        elif type_ == "table":
            schema, rows = self._table_footer(key, size, local)
        return ArtifactInfo(
            sha256=sha, type=type_, bytes=size, rows=rows, schema=schema, path=str(local)
        )

    def _table_footer(self, key: str, size: int, local: Path) -> tuple[dict[str, str], int]:
        import polars as pl
        import pyarrow.parquet as pq

        if local.exists():
            source: Any = local
        else:
            with self._remote(f"reading the footer of {key}"):
                tail = self.fs.cat_file(key, start=max(0, size - TABLE_TAIL))
                (n,) = struct.unpack("<I", tail[-8:-4])
                if n + 8 > len(tail):  # a footer larger than one tail read
                    tail = self.fs.cat_file(key, start=max(0, size - n - 8))
            # the footer with a leading magic is all a schema/row-count reader looks at
            source = io.BytesIO(b"PAR1" + tail[-(n + 8) :])
        schema = {k: str(v) for k, v in pl.read_parquet_schema(source).items()}
        if isinstance(source, io.BytesIO):
            source.seek(0)
        return schema, int(pq.read_metadata(source).num_rows)

    def info(self, sha: str) -> ArtifactInfo:
        """The artifact's manifest with a local path: downloaded into the read cache if needed."""
        found = self.find(sha)
        if found is None:
            msg = f"artifact {sha[:12]} is not in the object store {self.url}"
            raise StoreError(
                msg, hint="It was garbage-collected or never written; run the pipeline again."
            )
        return self.localize(found)

    def localize(self, info: ArtifactInfo) -> ArtifactInfo:
        """Make an artifact local (read cache: tmp, fsync, sha256 check, rename) and point at it."""
        local = self.object_path(info.sha256, info.type)
        if not local.exists():
            if info.type == "files":
                self._download_files(info.sha256, local)
            else:
                self._download_file(info.sha256, info.type, local)
        return replace(info, path=str(local))

    def _download_file(self, sha: str, type_: ArtifactType, local: Path) -> None:
        tmp = self.new_tmp_path(SUFFIX[type_])
        try:
            self._download(self.key(sha, type_), tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            self._verify(sha, file_digest(tmp))
            _replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)

    def _download_files(self, sha: str, local: Path) -> None:
        listing = self._marker(sha)["files"]
        staged = self.new_tmp_path()
        try:
            staged.mkdir(parents=True)
            prefix = self._files_prefix(sha)
            for f in listing:
                rel = PurePosixPath(f["path"])
                if rel.is_absolute() or ".." in rel.parts:  # never write outside the download
                    msg = f"the marker of {sha[:12]} in {self.url} lists the path {f['path']!r}"
                    raise StoreError(msg, hint="Delete the marker and run the pipeline again.")
                target = staged / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                self._download(f"{prefix}/{f['path']}", target)
                with open(target, "rb") as fh:
                    os.fsync(fh.fileno())
            self._verify(sha, tree_digest(staged))
            local.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(staged, local)
            except OSError:
                if not local.exists():
                    raise
        finally:
            if staged.exists():
                shutil.rmtree(staged, ignore_errors=True)

    def _verify(self, sha: str, got: str) -> None:
        if got != sha:
            msg = (
                f"artifact {sha[:12]} in the object store {self.url} is corrupt (sha256 {got[:12]})"
            )
            raise StoreError(msg, hint="Delete the object and run the pipeline again.")

    def resolve_prefix(self, prefix: str) -> str:
        """Full sha256 for an unambiguous prefix, from the remote listing."""
        if len(prefix) == 64:
            return prefix
        if len(prefix) < 4:
            msg = f"artifact id '{prefix}' is too short: give at least 4 characters"
            raise StoreError(msg)
        objects = f"{self.base}/objects"
        with self._remote("listing objects"):
            try:
                if self._s3:  # a server-side prefix listing
                    names = self.fs.find(objects, prefix=prefix, maxdepth=1, withdirs=True)
                else:
                    names = list(self.fs.ls(objects, detail=False))
            except FileNotFoundError:
                names = []
        # every artifact has a name with a suffix (a file set: its marker); a bare directory
        # is a file set whose publication never finished and does not exist for readers
        found = {PurePosixPath(n).name for n in names}
        matches = {n.split(".")[0] for n in found if "." in n and n.startswith(prefix)}
        if len(matches) != 1:
            what = "no artifact" if not matches else f"{len(matches)} artifacts"
            msg = f"{what} match '{prefix}'"
            raise StoreError(msg)
        return matches.pop()

    def _listing(self) -> list[dict[str, Any]]:
        with self._remote("listing objects"):
            try:
                return list(self.fs.ls(f"{self.base}/objects", detail=True))
            except FileNotFoundError:
                return []

    def iter_objects(self) -> Iterator[tuple[str, PurePath]]:
        """The remote objects: a file set shows as its directory and its marker."""
        for entry in self._listing():
            name = PurePosixPath(entry["name"])
            yield name.name.split(".")[0], name

    # -- garbage collection -----------------------------------------------------------------
    def gc(
        self, keep: set[str], *, dry_run: bool = False, tmp_age_s: float = 3600.0
    ) -> dict[str, int]:
        """Delete remote objects not in ``keep``, then trim the read cache and scratch space.

        A file set loses its marker first, so no reader sees it while its files go.
        """
        groups: dict[str, list[dict[str, Any]]] = {}
        for entry in self._listing():
            sha = PurePosixPath(entry["name"]).name.split(".")[0]
            groups.setdefault(sha, []).append(entry)
        removed_objects = removed_bytes = 0
        for sha, entries in groups.items():
            if sha in keep:
                continue
            removed_objects += 1
            ordered = sorted(entries, key=lambda e: (not e["name"].endswith(MARKER), e["type"]))
            for entry in ordered:
                name = entry["name"]
                with self._remote(f"deleting {name}"):
                    if entry["type"] == "directory":
                        removed_bytes += int(self.fs.du(name, total=True))
                        if not dry_run:
                            self.fs.rm(name, recursive=True)
                    else:
                        removed_bytes += int(entry.get("size") or 0)
                        if not dry_run:
                            with contextlib.suppress(FileNotFoundError):
                                self.fs.rm_file(name)
        if not self._atomic_put and not dry_run:
            self._gc_remote_tmp(tmp_age_s)
        local = super().gc(keep, dry_run=dry_run, tmp_age_s=tmp_age_s)
        return {
            "objects_removed": removed_objects,
            "bytes_removed": removed_bytes,
            "cache_objects_removed": local["objects_removed"],
            "cache_bytes_removed": local["bytes_removed"],
        }

    def _gc_remote_tmp(self, age_s: float) -> None:
        """Uploads a crashed runner left in the store's tmp/ (filesystems without atomic PUT)."""
        now = time.time()
        with self._remote("cleaning tmp/"):
            try:
                entries = self.fs.ls(f"{self.base}/tmp", detail=True)
            except FileNotFoundError:
                return
            for entry in entries:
                mtime = entry.get("mtime")
                if isinstance(mtime, int | float) and now - mtime > age_s:
                    self.fs.rm(entry["name"], recursive=True)
