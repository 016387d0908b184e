"""The LLM response cache: one SQLite file in the artifact store, keyed by the request.

``<store_root>/llm/cache.sqlite`` maps :meth:`LLMRequest.cache_key` (a sha256 of provider,
model, base URL and everything in the request; never a secret) to the reply as received
(``raw``) and as understood (``text``, ``data``, ``usage``, ``model``). A request already
answered is never sent again, which is what makes a generate stage deterministic per request,
a re-run free and a run stopped by a failure or a budget resumable: every answer it paid for
is kept the moment it arrives.

Only successful HTTP replies are stored (an error or a timeout is retried on the next run);
an answer that fails validation is stored all the same, as the model's answer to that request,
and the repair turn that follows is a different request with its own entry.

The file is in WAL mode with a busy timeout, so concurrent stages and processes can share it.
It holds no API key: neither the key nor the request headers are part of a key or a value.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from ductwork.ai.llm import LLMReply, Usage

CACHE_DIR = "llm"
CACHE_FILE = "cache.sqlite"
_SCHEMA = """
create table if not exists replies (
    key text primary key,
    provider text not null,
    model text not null,
    created real not null,
    reply text not null
)
"""


def cache_path(store_root: Path) -> Path:
    return store_root / CACHE_DIR / CACHE_FILE


def reply_to_json(reply: LLMReply) -> str:
    return json.dumps(
        {
            "text": reply.text,
            "data": reply.data,
            "usage": {
                "input_tokens": reply.usage.input_tokens,
                "output_tokens": reply.usage.output_tokens,
            },
            "model": reply.model,
            "stop_reason": reply.stop_reason,
            "raw": dict(reply.raw),
        },
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    )


def reply_from_json(text: str) -> LLMReply:
    doc: dict[str, Any] = json.loads(text)
    usage = doc.get("usage") or {}
    return LLMReply(
        text=doc.get("text") or "",
        data=doc.get("data"),
        usage=Usage(int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))),
        model=doc.get("model") or "",
        stop_reason=doc.get("stop_reason"),
        raw=doc.get("raw") or {},
        attempts=0,  # no HTTP attempt: it came from the cache
        latency_s=0.0,
    )


class ResponseCache:
    """A thread-safe key -> reply store. ``readonly`` opens an existing file without writing."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None
        if readonly:
            if not path.exists():
                self._conn = None
                return
            uri = f"{path.resolve().as_uri()}?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self._conn.execute("pragma journal_mode=wal")
        self._conn.execute("pragma synchronous=normal")
        self._conn.execute(_SCHEMA)
        self._conn.commit()

    @classmethod
    def in_store(cls, store_root: Path, *, readonly: bool = False) -> ResponseCache:
        return cls(cache_path(store_root), readonly=readonly)

    def get(self, key: str) -> LLMReply | None:
        if self._conn is None:
            return None
        with self._lock:
            try:
                row = self._conn.execute("select reply from replies where key = ?", (key,))
                found = row.fetchone()
            except sqlite3.OperationalError:  # a read-only open of a file without the table
                return None
        return None if found is None else reply_from_json(found[0])

    def contains(self, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` have a reply (in batches: a dry run asks for every row)."""
        if self._conn is None:
            return set()
        wanted = list(dict.fromkeys(keys))
        found: set[str] = set()
        with self._lock:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                try:
                    rows = self._conn.execute(
                        f"select key from replies where key in ({marks})",
                        chunk,
                    ).fetchall()
                except sqlite3.OperationalError:
                    return set()
                found.update(r[0] for r in rows)
        return found

    def put(self, key: str, reply: LLMReply, *, provider: str, model: str) -> None:
        if self._conn is None or self.readonly:
            return
        blob = reply_to_json(reply)
        with self._lock:
            self._conn.execute(
                "insert or replace into replies (key, provider, model, created, reply) "
                "values (?, ?, ?, ?, ?)",
                (key, provider, model, time.time(), blob),
            )
            self._conn.commit()

    def __len__(self) -> int:
        if self._conn is None:
            return 0
        with self._lock:
            try:
                return int(self._conn.execute("select count(*) from replies").fetchone()[0])
            except sqlite3.OperationalError:
                return 0

    def close(self) -> None:
        if self._conn is not None:
            with self._lock:
                self._conn.close()
            self._conn = None

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
