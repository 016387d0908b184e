"""Find a model bundle from what a user writes: a path, or ``NAME@ALIAS`` / ``NAME/VERSION``.

A path is a bundle directory (``bundle.json`` inside). ``NAME@ALIAS`` (``flights-delay@champion``)
and ``NAME/VERSION`` look the model up in the MLflow registry and fetch the bundle logged with
that version (cached under the project's ductwork directory, verified on load).
"""

from __future__ import annotations

import re
from pathlib import Path

from ductwork.errors import DataError
from ductwork.ml.bundle import META_FILE, Bundle

_REF = re.compile(
    r"^(?:models:/)?(?P<name>[A-Za-z0-9_.\-]+)(?:@(?P<alias>[A-Za-z0-9_\-]+)|/(?P<version>\d+))$"
)


def is_registry_ref(ref: str) -> bool:
    """``NAME@ALIAS``, ``NAME/VERSION`` or ``models:/...`` - unless it is an existing path."""
    return not Path(ref).exists() and _REF.match(ref) is not None


def parse_ref(ref: str) -> tuple[str, str | None, int | None]:
    match = _REF.match(ref)
    if match is None:
        msg = f"'{ref}' is neither a bundle directory nor NAME@ALIAS or NAME/VERSION"
        raise DataError(msg)
    version = match["version"]
    return match["name"], match["alias"], int(version) if version else None


def load_bundle(
    ref: str | Path, *, project_dir: Path | None = None, missing_ok: bool = False
) -> Bundle | None:
    """The bundle ``ref`` names, or None when ``missing_ok`` and the registry has no such model.

    Relative paths are resolved against ``project_dir``.
    """
    text = str(ref)
    path = Path(text)
    if not path.is_absolute() and project_dir is not None:
        path = project_dir / path
    if path.exists() or (path / META_FILE).exists():
        return Bundle.load(path)
    if not is_registry_ref(text):
        msg = f"no model bundle at '{text}' (a directory with {META_FILE}, or NAME@ALIAS)"
        raise DataError(msg)
    name, alias, version = parse_ref(text)
    from ductwork.ml import tracking

    fetched = tracking.fetch_bundle(
        name, alias=alias, version=version, project_dir=project_dir or Path.cwd()
    )
    if fetched is None:
        if missing_ok:
            return None
        what = f"alias '{alias}'" if alias else f"version {version}"
        msg = f"the registry has no model '{name}' with {what}"
        raise DataError(msg)
    return Bundle.load(fetched)
