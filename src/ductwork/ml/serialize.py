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
    data = sio.dumps(obj)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


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
