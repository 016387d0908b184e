"""Fingerprints: what decides whether a stage's saved outputs can be reused.

fingerprint = sha256(canonical JSON of {kind, kind version, params without secrets,
input content hashes, source stamp of external data, code stamp of user code}).

The components are kept too, so ``ductwork plan`` can say *which* param, input or code changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from functools import singledispatch
from pathlib import Path, PurePath
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr

SECRET_MARK = "<secret>"


@singledispatch
def canonical(value: Any) -> Any:
    """Turn a value into plain JSON data in a stable form (dict keys sorted later by dumps)."""
    if callable(value):
        return {
            "callable": f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', '?')}"
        }
    msg = f"cannot fingerprint a value of type {type(value).__name__}"
    raise TypeError(msg)


@canonical.register(type(None))
@canonical.register(bool)
@canonical.register(int)
@canonical.register(str)
def _(value: Any) -> Any:
    return value


@canonical.register(float)
def _float(value: float) -> Any:
    if math.isnan(value) or math.isinf(value):
        return {"float": repr(value)}
    return value


@canonical.register(Decimal)
def _decimal(value: Decimal) -> Any:
    return {"decimal": str(value)}


@canonical.register(SecretStr)
@canonical.register(SecretBytes)
def _secret(value: Any) -> Any:
    return SECRET_MARK


@canonical.register(dict)
def _dict(value: Mapping[Any, Any]) -> Any:
    return {str(k): canonical(v) for k, v in value.items()}


@canonical.register(list)
@canonical.register(tuple)
def _list(value: Any) -> Any:
    return [canonical(v) for v in value]


@canonical.register(set)
@canonical.register(frozenset)
def _set(value: Any) -> Any:
    return sorted((canonical(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))


@canonical.register(PurePath)
def _path(value: PurePath) -> Any:
    return value.as_posix()


@canonical.register(datetime)
@canonical.register(date)
def _datetime(value: Any) -> Any:
    return value.isoformat()


@canonical.register(Enum)
def _enum(value: Enum) -> Any:
    return canonical(value.value)


@canonical.register(BaseModel)
def _model(value: BaseModel) -> Any:
    # Walk fields ourselves so SecretStr values are replaced, never dumped.
    out: dict[str, Any] = {}
    for name in type(value).model_fields:
        out[name] = canonical(getattr(value, name))
    return out


def canonical_json(value: Any) -> str:
    return json.dumps(canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Fingerprint:
    """A stage fingerprint with the components it was made from."""

    digest: str
    components: dict[str, Any] = field(hash=False, compare=False)


def stage_fingerprint(
    *,
    kind: str,
    kind_version: str,
    params: Any,
    inputs: Mapping[str, str],
    source: str,
    code: str,
    expect: Any = None,
) -> Fingerprint:
    """Combine the parts that decide a stage's outputs into one digest."""
    components = {
        "kind": kind,
        "kind_version": kind_version,
        "params": canonical(params),
        "inputs": dict(inputs),
        "source": source,
        "code": code,
    }
    if expect:
        components["expect"] = canonical(expect)
    digest = sha256_text(json.dumps(components, sort_keys=True, separators=(",", ":")))
    return Fingerprint(digest=digest, components=components)


def diff_components(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable reasons why two fingerprints differ ('param sql changed', ...)."""
    reasons: list[str] = []
    if old.get("kind") != new.get("kind"):
        reasons.append(f"kind changed ({old.get('kind')} -> {new.get('kind')})")
    elif old.get("kind_version") != new.get("kind_version"):
        reasons.append("stage kind version changed")
    old_p, new_p = old.get("params") or {}, new.get("params") or {}
    for key in sorted(set(old_p) | set(new_p)):
        if old_p.get(key) != new_p.get(key):
            reasons.append(f"param '{key}' changed")
    old_i, new_i = old.get("inputs") or {}, new.get("inputs") or {}
    for key in sorted(set(old_i) | set(new_i)):
        if key not in old_i:
            reasons.append(f"input '{key}' added")
        elif key not in new_i:
            reasons.append(f"input '{key}' removed")
        elif old_i[key] != new_i[key]:
            reasons.append(f"input '{key}' changed")
    if old.get("source") != new.get("source"):
        reasons.append("source data changed")
    if old.get("code") != new.get("code"):
        reasons.append("code changed")
    if old.get("expect") != new.get("expect"):
        reasons.append("expect rules changed")
    return reasons


# --- content digests of files, cached by stat so unchanged files are not re-read --------------

_digest_cache: dict[tuple[str, int, int, int], str] = {}
_digest_lock = threading.Lock()
_CHUNK = 1 << 20


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's content; cached in-process by (path, inode, size, mtime_ns)."""
    p = os.fspath(path)
    st = os.stat(p)
    key = (os.path.abspath(p), st.st_ino, st.st_size, st.st_mtime_ns)
    with _digest_lock:
        hit = _digest_cache.get(key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    with _digest_lock:
        _digest_cache[key] = digest
    return digest


def tree_digest(root: str | os.PathLike[str]) -> str:
    """sha256 over a directory: sorted relative paths and their file digests."""
    base = Path(root)
    h = hashlib.sha256()
    for f in sorted(p for p in base.rglob("*") if p.is_file()):
        h.update(f.relative_to(base).as_posix().encode())
        h.update(b"\0")
        h.update(file_digest(f).encode())
        h.update(b"\n")
    return h.hexdigest()


def paths_digest(paths: list[Path]) -> str:
    """sha256 over several files (e.g. a glob's matches), names included."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(b"\0")
        h.update(file_digest(p).encode())
        h.update(b"\n")
    return h.hexdigest()


_source_cache: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def source_digest(obj: Any) -> str:
    """sha256 of a Python object's source (function or class); falls back to its qualname.

    Cached per object: a redefined function is a new object, so edits are still seen.
    """
    try:
        return _source_cache[obj]
    except (KeyError, TypeError):
        pass
    try:
        src = inspect.getsource(obj)
    except (OSError, TypeError):
        src = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
    digest = sha256_text(src)
    with contextlib.suppress(TypeError):
        _source_cache[obj] = digest
    return digest
