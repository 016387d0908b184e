"""Vector collections: keep one in sync with an embeddings table, and search it.

The ``index`` stage calls :func:`sync_qdrant` (or :func:`sync_lancedb` for the optional
LanceDB backend); ``ductwork search``, the ``generate`` stage's
retrieval option and evals call :func:`search` with the index's manifest (the JSON the stage
writes: backend, location, collection, model, ...), so a search embeds its queries with the
model the documents were embedded with.

Points are identified by ``uuid5(key)``, so an upsert of the same row replaces it. Every point
carries two reserved payload fields next to the user's columns: ``_dw_key`` (the row's key as
text, what a hit reports as its id) and ``_dw_hash`` (a digest of the vector and the payload):
a sync reads the ids and hashes already there, upserts only new and changed rows and deletes
points whose rows are gone, so re-running an unchanged index writes nothing.

Qdrant's local mode (a directory under the store, one per collection) takes a lock on its
directory for as long as a client is open: every function here opens, works and closes, and
waits up to ``timeout_s`` for another process (a search, a parallel stage) to let go.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ductwork.errors import DataError, SourceError, did_you_mean

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import polars as pl
    from qdrant_client import QdrantClient

KEY_FIELD = "_dw_key"
HASH_FIELD = "_dw_hash"
VECTOR_FIELD = "_dw_vector"  # LanceDB: the vector column (a payload column may be "vector")
RESERVED_PREFIX = "_dw_"
STATE_FILE = "ductwork-index.json"  # written next to a local collection's files after a sync
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "ductwork:index")
_DISTANCES = {"cosine": "Cosine", "dot": "Dot", "euclid": "Euclid"}

ProgressFn = Callable[[float, float | None, str], None]


def point_id(key: object) -> str:
    """The Qdrant id of a row: a UUID derived from its key (the same key, the same point)."""
    return str(uuid.uuid5(_NAMESPACE, str(key)))


def row_hash(vector: bytes, payload: Mapping[str, Any]) -> str:
    """What decides whether a point must be rewritten: its vector bytes and its payload."""
    h = hashlib.sha256(vector)
    h.update(
        json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class Hit:
    """One search result: the row's key, the similarity score and the row's payload."""

    id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score, "payload": self.payload}


# ------------------------------------------------------------------------------ where Qdrant is
@dataclass(frozen=True)
class QdrantTarget:
    """A local-mode directory or a server URL (the API key only ever read from the env)."""

    path: Path | None = None
    url: str | None = None
    api_key_env: str | None = None
    timeout_s: float = 30.0

    @classmethod
    def local(cls, store_root: Path, collection: str, timeout_s: float = 30.0) -> QdrantTarget:
        return cls(path=local_path("qdrant", store_root, collection), timeout_s=timeout_s)

    def describe(self, store_root: Path | None = None) -> str:
        """The location for a manifest: the local directory relative to the store, or the URL."""
        if self.path is not None:
            if store_root is not None:
                try:
                    return self.path.relative_to(store_root).as_posix()
                except ValueError:
                    pass
            return self.path.as_posix()
        return redact_url(self.url or "")

    @contextmanager
    def client(self) -> Iterator[QdrantClient]:
        """An open client; closed (and a local directory unlocked) on leaving."""
        client = self._open()
        try:
            yield client
        finally:
            client.close()

    def _open(self) -> QdrantClient:
        from qdrant_client import QdrantClient

        if self.path is None:
            return self._open_server()
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return QdrantClient(path=str(self.path))
            except RuntimeError as exc:  # "... is already accessed by another instance ..."
                if "already accessed" not in str(exc):
                    raise
                if time.monotonic() >= deadline:
                    msg = (
                        f"the local Qdrant collection at {self.path} stayed open in another "
                        f"process or thread for {self.timeout_s:g} s"
                    )
                    hint = (
                        "Local mode allows one client at a time: wait for the other run or "
                        "search to finish, or use a Qdrant server (url: http://host:6333)."
                    )
                    raise SourceError(msg, hint=hint) from exc
                time.sleep(0.1)

    def _open_server(self) -> QdrantClient:
        from qdrant_client import QdrantClient

        api_key = None
        if self.api_key_env:
            api_key = os.environ.get(self.api_key_env)
            if not api_key:
                msg = f"api_key_env names ${self.api_key_env}, which is not set"
                raise DataError(msg, hint=f"export {self.api_key_env}=... (or put it in .env)")
        client = QdrantClient(
            url=self.url,
            api_key=api_key,
            timeout=max(1, math.ceil(self.timeout_s)),
            check_compatibility=False,  # no version probe: get_collections below checks the link
        )
        try:
            client.get_collections()
        except Exception as exc:
            client.close()
            msg = f"cannot reach the Qdrant server at {redact_url(self.url or '')}: {exc}"
            hint = "Check the URL and that the server is running (docker run -p 6333:6333 qdrant/qdrant)."
            raise SourceError(msg, hint=hint) from exc
        return client


def redact_url(url: str) -> str:
    """A URL without user info (``https://user:pw@host`` -> ``https://host``)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def local_path(backend: str, store_root: Path, collection: str) -> Path:
    """Where a local collection lives: ``<store>/vectors/<backend>/<collection>/``."""
    return store_root / "vectors" / backend / collection


def local_state(path: Path) -> str | None:
    """A digest of a local collection's files (names, sizes, mtimes); None when it has none.

    Opening and searching a collection changes none of them; an upsert or a delete does.
    """
    files = sorted(
        p for p in path.rglob("*") if p.is_file() and p.name not in (".lock", STATE_FILE)
    )
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------ sync
@dataclass
class SyncResult:
    count: int
    upserted: int
    deleted: int
    unchanged: int
    recreated: bool


def sync_qdrant(
    target: QdrantTarget,
    collection: str,
    *,
    ids: Sequence[str],
    hashes: Sequence[str],
    vectors: npt.NDArray[np.float32],
    payloads: Sequence[dict[str, Any]],
    distance: str,
    batch_size: int = 256,
    progress: ProgressFn | None = None,
) -> SyncResult:
    """Make ``collection`` hold exactly these points: upsert new/changed, delete the rest."""
    from qdrant_client import models

    dims = int(vectors.shape[1])
    wanted = models.VectorParams(size=dims, distance=models.Distance(_DISTANCES[distance]))
    with target.client() as client:
        recreated = False
        if client.collection_exists(collection):
            params = client.get_collection(collection).config.params.vectors
            same = (
                isinstance(params, models.VectorParams)
                and params.size == dims
                and params.distance == wanted.distance
            )
            if not same:
                _existing_hashes(client, collection)  # refuses a collection ductwork did not make
                client.delete_collection(collection)
                recreated = True
        if not client.collection_exists(collection):
            client.create_collection(collection, vectors_config=wanted)
        existing = _existing_hashes(client, collection)
        todo = [
            i for i, (pid, h) in enumerate(zip(ids, hashes, strict=True)) if existing.get(pid) != h
        ]
        gone = sorted(set(existing) - set(ids))
        total = len(todo) + len(gone)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            client.upsert(
                collection,
                points=models.Batch(
                    ids=[ids[i] for i in chunk],
                    vectors=vectors[chunk].tolist(),
                    payloads=[payloads[i] for i in chunk],
                ),
                wait=True,
            )
            if progress is not None:
                progress(start + len(chunk), total, "points")
        for start in range(0, len(gone), batch_size):
            client.delete(
                collection,
                points_selector=models.PointIdsList(points=list(gone[start : start + batch_size])),
                wait=True,
            )
            if progress is not None:
                progress(len(todo) + min(start + batch_size, len(gone)), total, "points")
        count = client.count(collection, exact=True).count
    return SyncResult(
        count=count,
        upserted=len(todo),
        deleted=len(gone),
        unchanged=len(ids) - len(todo),
        recreated=recreated,
    )


def _existing_hashes(client: QdrantClient, collection: str) -> dict[str, str | None]:
    """Point id -> its ``_dw_hash``; refuses a collection with points ductwork did not write."""
    out: dict[str, str | None] = {}
    offset: Any = None
    while True:
        points, offset = client.scroll(
            collection,
            limit=2048,
            offset=offset,
            with_payload=[HASH_FIELD, KEY_FIELD],
            with_vectors=False,
        )
        for p in points:
            payload = p.payload or {}
            if KEY_FIELD not in payload:
                msg = (
                    f"Qdrant collection '{collection}' holds points that ductwork did not write "
                    f"(point {p.id} has no '{KEY_FIELD}'): it will not overwrite or delete them"
                )
                raise DataError(msg, hint="Give the index stage another 'collection' name.")
            out[str(p.id)] = payload.get(HASH_FIELD)
        if offset is None:
            return out


def sync_lancedb(
    path: Path,
    collection: str,
    *,
    keys: Sequence[str],
    hashes: Sequence[str],
    vectors: npt.NDArray[np.float32],
    payload: pl.DataFrame,
    batch_size: int = 256,
    progress: ProgressFn | None = None,
) -> SyncResult:
    """The LanceDB version of :func:`sync_qdrant`: a table ``collection`` in a local database.

    Rows are matched on ``_dw_key``; the distance is chosen at query time, so only a new vector
    size or new payload columns recreate the table.
    """
    import lancedb  # type: ignore[import-not-found, unused-ignore]
    import polars as pl

    dims = int(vectors.shape[1])
    frame = pl.DataFrame(
        {KEY_FIELD: list(keys), VECTOR_FIELD: pl.Series(vectors, dtype=pl.Array(pl.Float32, dims))}
    ).with_columns(*payload.get_columns(), pl.Series(HASH_FIELD, list(hashes), dtype=pl.String))
    table = frame.to_arrow()
    path.mkdir(parents=True, exist_ok=True)
    db = lancedb.connect(str(path))
    try:
        tbl = db.open_table(collection)
    except (ValueError, FileNotFoundError):
        tbl = None
    recreated = False
    if tbl is not None:
        names = tbl.schema.names
        if KEY_FIELD not in names or HASH_FIELD not in names:
            msg = (
                f"LanceDB table '{collection}' at {path} was not written by ductwork (no "
                f"'{KEY_FIELD}' column): it will not overwrite or delete its rows"
            )
            raise DataError(msg, hint="Give the index stage another 'collection' name.")
        old = [(f.name, f.type) for f in tbl.schema]
        if old != [(f.name, f.type) for f in table.schema]:
            db.drop_table(collection)
            tbl, recreated = None, True
    if tbl is None:
        db.create_table(collection, data=table)
        if progress is not None:
            progress(len(keys), len(keys), "points")
        return SyncResult(len(keys), len(keys), 0, 0, recreated)
    scan = tbl.search(None).select([KEY_FIELD, HASH_FIELD]).limit(None).to_arrow()
    existing = dict(
        zip(scan.column(KEY_FIELD).to_pylist(), scan.column(HASH_FIELD).to_pylist(), strict=True)
    )
    todo = [i for i, (k, h) in enumerate(zip(keys, hashes, strict=True)) if existing.get(k) != h]
    gone = sorted(set(existing) - set(keys))
    total = len(todo) + len(gone)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        (
            tbl.merge_insert(KEY_FIELD)
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(table.take(chunk))
        )
        if progress is not None:
            progress(start + len(chunk), total, "points")
    for start in range(0, len(gone), batch_size):
        chunk = gone[start : start + batch_size]
        tbl.delete(f"{_sql_name(KEY_FIELD)} IN ({', '.join(_sql_value(k) for k in chunk)})")
        if progress is not None:
            progress(len(todo) + start + len(chunk), total, "points")
    return SyncResult(
        count=int(tbl.count_rows()),
        upserted=len(todo),
        deleted=len(gone),
        unchanged=len(keys) - len(todo),
        recreated=recreated,
    )


def _sql_name(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _sql_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


# ------------------------------------------------------------------------------ search
def search(
    manifest: Mapping[str, Any],
    queries: Sequence[str],
    k: int = 5,
    *,
    store_root: Path,
    where: Mapping[str, Any] | None = None,
    project_dir: Path | None = None,
) -> list[list[Hit]]:
    """The ``k`` nearest rows to each query (one list per query, best first).

    ``manifest`` is an index stage's output; the queries are embedded in one batch with the
    model the documents were embedded with. ``where`` keeps rows whose payload field equals a
    value (a list: any of the values). ``project_dir`` resolves a model given as a relative
    path (default: the store's parent directory). Scores are Qdrant's for both backends:
    cosine similarity, dot product, or euclidean distance (smaller is nearer).
    """
    if k < 1:
        msg = f"k must be at least 1, not {k}"
        raise DataError(msg)
    backend = manifest.get("backend")
    if backend not in ("qdrant", "lancedb"):
        msg = f"'{backend}' is not a vector backend ductwork can search (qdrant, lancedb)"
        raise DataError(msg)
    if not queries:
        return []
    conditions = _where(manifest, where)
    vectors = embed_queries(manifest, queries, project_dir=project_dir or store_root.parent)
    if backend == "lancedb":
        return _search_lancedb(manifest, vectors, k, conditions, store_root)
    from qdrant_client import models

    query_filter = _qdrant_filter(conditions)
    requests = [
        models.QueryRequest(query=v.tolist(), limit=k, filter=query_filter, with_payload=True)
        for v in vectors
    ]
    target = target_of(manifest, store_root)
    with target.client() as client:
        if not client.collection_exists(manifest["collection"]):
            msg = f"Qdrant collection '{manifest['collection']}' does not exist at {target.describe()}"
            raise DataError(msg, hint="Re-run the index stage: ductwork run --force --only INDEX")
        responses = client.query_batch_points(manifest["collection"], requests=requests)
    return [[_hit(p) for p in r.points] for r in responses]


def target_of(manifest: Mapping[str, Any], store_root: Path) -> QdrantTarget:
    if manifest.get("url"):
        return QdrantTarget(url=manifest["url"], api_key_env=manifest.get("api_key_env"))
    return QdrantTarget(path=store_root / manifest["location"])


def embed_queries(
    manifest: Mapping[str, Any], queries: Sequence[str], *, project_dir: Path
) -> npt.NDArray[np.float32]:
    from ductwork.ai import embeddings as emb

    name = manifest.get("model")
    if not name:
        msg = (
            f"index '{manifest.get('collection')}' records no embedding model to embed queries with"
        )
        raise DataError(msg, hint="Index the output of an embed stage (it has a 'model' column).")
    ref = emb.resolve_model(str(name), project_dir=project_dir)
    if manifest.get("model_id") and ref.id != manifest["model_id"]:
        msg = (
            f"embedding model '{name}' is now {ref.id}, but the index was built with "
            f"{manifest['model_id']}: query vectors would not match the documents'"
        )
        raise DataError(msg, hint="Re-run the embed and index stages with the model as it is now.")
    model, _ = emb.load_model(ref)
    return emb.encode(
        model, list(queries), batch_size=64, normalize=bool(manifest.get("normalized", True))
    )


def _where(
    manifest: Mapping[str, Any], where: Mapping[str, Any] | None
) -> list[tuple[str, list[Any]]]:
    """``where`` as (payload field, accepted values), checked against the index's payload."""
    fields = list(manifest.get("payload") or {})
    out: list[tuple[str, list[Any]]] = []
    for name, value in (where or {}).items():
        if name not in fields:
            msg = (
                f"where: '{name}' is not a payload field of index "
                f"'{manifest.get('collection')}'{did_you_mean(name, fields)}"
            )
            raise DataError(msg, hint=f"Payload fields: {', '.join(fields) or 'none'}")
        values = list(value) if isinstance(value, list | tuple | set) else [value]
        if not values or any(v is None or isinstance(v, dict | list) for v in values):
            msg = f"where: '{name}' needs one or more plain values (text, numbers, booleans)"
            raise DataError(msg)
        if len(values) > 1 and any(isinstance(v, float) for v in values):
            msg = f"where: '{name}' compares decimal numbers one at a time, not a list of them"
            raise DataError(msg)
        out.append((name, values))
    return out


def _qdrant_filter(conditions: list[tuple[str, list[Any]]]) -> Any:
    if not conditions:
        return None
    from qdrant_client import models

    must: list[Any] = []
    for name, values in conditions:
        if isinstance(values[0], float):
            v = values[0]
            must.append(models.FieldCondition(key=name, range=models.Range(gte=v, lte=v)))
        elif len(values) == 1:
            must.append(models.FieldCondition(key=name, match=models.MatchValue(value=values[0])))
        else:
            must.append(models.FieldCondition(key=name, match=models.MatchAny(any=values)))
    return models.Filter(must=must)


def _hit(point: Any) -> Hit:
    payload = dict(point.payload or {})
    key = payload.pop(KEY_FIELD, str(point.id))
    payload = {k: v for k, v in payload.items() if not k.startswith(RESERVED_PREFIX)}
    return Hit(id=str(key), score=float(point.score), payload=payload)


def _search_lancedb(
    manifest: Mapping[str, Any],
    vectors: npt.NDArray[np.float32],
    k: int,
    conditions: list[tuple[str, list[Any]]],
    store_root: Path,
) -> list[list[Hit]]:
    from ductwork.errors import import_optional

    lancedb: Any = import_optional("lancedb", extra="lancedb", feature="searching a LanceDB index")
    path = store_root / manifest["location"]
    try:
        tbl = lancedb.connect(str(path)).open_table(manifest["collection"])
    except (ValueError, FileNotFoundError) as exc:
        msg = f"LanceDB table '{manifest['collection']}' does not exist at {path}"
        raise DataError(
            msg, hint="Re-run the index stage: ductwork run --force --only INDEX"
        ) from exc
    distance = manifest.get("distance", "cosine")
    sql = " AND ".join(
        f"{_sql_name(name)} IN ({', '.join(_sql_value(v) for v in values)})"
        for name, values in conditions
    )
    columns = [KEY_FIELD, *(manifest.get("payload") or {}), "_distance"]
    out: list[list[Hit]] = []
    for vector in vectors:
        query = (
            tbl.search(vector.tolist(), vector_column_name=VECTOR_FIELD)
            .distance_type({"euclid": "l2"}.get(distance, distance))
            .limit(k)
            .select(columns)
        )
        if sql:
            query = query.where(sql, prefilter=True)
        hits = []
        for row in query.to_list():
            d = float(row.pop("_distance"))
            # LanceDB returns distances: 1 - cosine, 1 - dot, squared L2. Report Qdrant's scores.
            score = math.sqrt(max(d, 0.0)) if distance == "euclid" else 1.0 - d
            key = str(row.pop(KEY_FIELD))
            hits.append(Hit(id=key, score=score, payload=row))
        out.append(hits)
    return out


# ------------------------------------------------------------------------------ evals
def recall_at_k(
    results: Sequence[Sequence[Hit]],
    relevant: Sequence[str | Collection[str]],
    k: int | None = None,
) -> float:
    """Mean over queries of the share of relevant ids found in the top ``k`` hits.

    ``relevant[i]`` is the id (or the ids) that query ``i`` should find; with one id per query
    this is the hit rate at ``k``. ``k`` defaults to all the hits returned.
    """
    if len(results) != len(relevant):
        msg = f"recall_at_k: {len(results)} result lists but {len(relevant)} relevance sets"
        raise ValueError(msg)
    if not results:
        return 0.0
    total = 0.0
    for hits, rel in zip(results, relevant, strict=True):
        wanted = {rel} if isinstance(rel, str) else set(rel)
        if not wanted:
            msg = "recall_at_k: a query with no relevant ids"
            raise ValueError(msg)
        found = {h.id for h in (hits if k is None else hits[:k])}
        total += len(wanted & found) / len(wanted)
    return total / len(results)
