"""Saving and loading fitted objects without executing arbitrary code.

Fitted transforms and estimators are written with skops, which stores an object as a tree of
known types instead of a pickle. Loading refuses any type outside an explicit allow-list
(scikit-learn, NumPy, SciPy, XGBoost, LightGBM and ductwork's own ML classes), and checks the
file's sha256 against the one recorded when it was written, so a swapped or edited file is
refused before skops reads it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ductwork.errors import DataError

TRUSTED_PREFIXES: tuple[str, ...] = (
    "sklearn.",
    "numpy.",
    "scipy.",
    "xgboost.",
    "lightgbm.",
    "ductwork.ml.",
)
TRUSTED_NAMES: frozenset[str] = frozenset({"collections.OrderedDict", "builtins.slice"})


def is_trusted(type_name: str, extra: Iterable[str] = ()) -> bool:
    """Whether ``type_name`` (``module.Class``) may be loaded."""
    return (
        type_name in TRUSTED_NAMES
        or type_name.startswith(TRUSTED_PREFIXES)
        or type_name in set(extra)
    )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dump(obj: Any, path: Path) -> str:
    """Write ``obj`` with skops to ``path``; return the file's sha256."""
    import skops.io as sio

    path.parent.mkdir(parents=True, exist_ok=True)
    data = _stable_zip(sio.dumps(obj))
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _stable_zip(data: bytes) -> bytes:
    """Rewrite skops' zip so the same object always gives the same bytes.

    skops names shared objects and array files by ``id()`` (memory addresses) and stamps the
    zip entries with the current time. Both are renumbered in order of first appearance and
    the times fixed, so a model retrained to the same weights keeps its sha256: the stages
    after it stay cached, and two executors produce identical artifacts.
    """
    import io
    import json
    import re
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as src:
        schema = json.loads(src.read("schema.json"))
        names = {i.filename: src.read(i.filename) for i in src.infolist()}
    ids: dict[int, int] = {}

    def renumber(value: int) -> int:
        return ids.setdefault(value, len(ids) + 1)

    def walk(node: object) -> object:
        if isinstance(node, dict):
            out: dict[str, object] = {}
            for key, value in node.items():
                if key == "__id__" and isinstance(value, int):
                    out[key] = renumber(value)
                elif key == "file" and isinstance(value, str) and value in names:
                    stem, dot, ext = value.partition(".")
                    out[key] = f"{renumber(int(stem))}{dot}{ext}" if stem.isdigit() else value
                else:
                    out[key] = walk(value)
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    new_schema = walk(schema)
    files: dict[str, bytes] = {"schema.json": json.dumps(new_schema, indent=2).encode()}
    for name, content in names.items():
        if name == "schema.json":
            continue
        match = re.fullmatch(r"(\d+)(\..*)", name)
        new_name = f"{renumber(int(match[1]))}{match[2]}" if match else name
        files[new_name] = content
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            dst.writestr(info, files[name])
    return out.getvalue()


def load(path: Path, *, sha256: str | None, trusted: Iterable[str] = ()) -> Any:
    """Load an object written by :func:`dump`.

    ``sha256`` is the digest recorded at write time (``None`` skips the check, for files the
    caller has just verified another way). ``trusted`` adds ``module.Class`` names to the
    allow-list.
    """
    import skops.io as sio

    try:
        data = path.read_bytes()
    except OSError as exc:
        msg = f"cannot read {path}: {exc.strerror or exc}"
        raise DataError(msg) from None
    if sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            msg = (
                f"{path} has sha256 {actual[:12]}, but {sha256[:12]} was recorded when it was "
                "written: the file was changed or replaced, so it is not loaded"
            )
            raise DataError(msg)
    extra = tuple(trusted)
    try:
        types = sio.get_untrusted_types(data=data)
    except Exception as exc:
        msg = f"{path} is not a skops file: {exc}"
        raise DataError(msg) from None
    refused = sorted(t for t in types if not is_trusted(t, extra))
    if refused:
        msg = (
            f"{path} contains types outside the trusted list: {', '.join(refused)}; "
            "they are not loaded (pass them as trusted types if you know where the file "
            "came from)"
        )
        raise DataError(msg)
    return sio.loads(data, trusted=list(types))
