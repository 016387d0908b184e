"""MLflow tracking and model registry for ductwork's model bundles.

Where: ``MLFLOW_TRACKING_URI`` when it is set (any MLflow tracking server or database), else an
embedded store in the project's ductwork directory: the SQLite database
``<store>/mlflow/mlflow.db`` (tracking and registry) and the artifact root
``<store>/mlflow/artifacts``. MLflow's own tools work on it as is::

    mlflow ui --backend-store-uri sqlite:////abs/path/.ductwork/mlflow/mlflow.db

What a registration writes (:func:`register_bundle`): one MLflow run per pipeline run (named
``<pipeline>/<ductwork run id>``) with params, metrics and artifacts (``bundle/`` = the whole
ductwork bundle, ``report/``, ``model_card.md``); the model logged as an MLflow model (sklearn
flavour, skops format, signature and input example, so ``mlflow.pyfunc.load_model`` and
``mlflow models serve`` work); a registered model version tagged with the bundle's sha256, and
aliases. Registering a bundle that a version already holds reuses that version.

Aliases move with :func:`promote` and :func:`rollback`; every move made through ductwork is
appended to the registered-model tag ``ductwork.<alias>_history`` (comma-separated versions),
which is what ``rollback`` walks back.

MLflow is kept quiet and offline: no telemetry, no run links printed, no pip requirements
inference (they are given explicitly), its INFO logs and warnings suppressed during our calls.
Credentials in a tracking URI are never written to artifacts or logs (:func:`public_uri`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ductwork.errors import DataError, SourceError, UsageError, did_you_mean
from ductwork.ml.bundle import META_FILE, MODEL_FILE, Bundle

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_ALIAS = "champion"
CHALLENGER = "challenger"
TAG_BUNDLE_SHA = "ductwork.bundle_sha256"
TAG_MODEL_ID = "ductwork.model_id"
TAG_RUN_ID = "ductwork.run_id"
TAG_PIPELINE = "ductwork.pipeline"
TAG_STAGE = "ductwork.stage"
BUNDLE_ARTIFACT = "bundle"
MODEL_ARTIFACT = "model"
CARD_ARTIFACT = "model_card.md"
REGISTRATION_ARTIFACT = "registration.json"
MAX_HISTORY = 100
MAX_DESCRIPTION = 5000  # MLflow's SQL column for version descriptions
_MAX_PARAM_VALUE = 6000
_MAX_KEY = 250

NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")  # what ``NAME@ALIAS`` / ``NAME/VERSION`` refs accept
ALIAS_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
_KEY_BAD = re.compile(r"[^A-Za-z0-9_.\- ]+")

# Set (unless the user already set them) before MLflow is imported: telemetry is read then.
QUIET_ENV: dict[str, str] = {
    "MLFLOW_DISABLE_TELEMETRY": "true",  # no usage telemetry (MLflow >= 3.2 sends it by default)
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # no "View run ... at: http://" lines
    "MLFLOW_PRINT_MODEL_URLS_ON_CREATION": "false",  # no model URL lines either
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # no tqdm bars on uploads / downloads
    "MLFLOW_DISABLE_AGENT_HINT": "1",  # no "load the tracing skill" hint line on import
}

_FLUENT_LOCK = threading.RLock()  # MLflow's fluent API (log_model) uses process-wide state
_LOG = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ locations
def tracking_uri(store_root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the embedded SQLite database under ``store_root``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return embedded_uri(store_root)


def embedded_uri(store_root: Path) -> str:
    """``sqlite:////abs/path/mlflow/mlflow.db`` (four slashes: an absolute path)."""
    return "sqlite:///" + (Path(store_root).absolute() / "mlflow" / "mlflow.db").as_posix()


def artifact_root(store_root: Path) -> Path:
    """Where the embedded default keeps run and model artifacts."""
    return Path(store_root).absolute() / "mlflow" / "artifacts"


def public_uri(uri: str) -> str:
    """``uri`` without credentials: user, password and secret-looking query parameters."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable tracking URI>"
    netloc = parts.netloc.rsplit("@", 1)[-1] if "@" in parts.netloc else parts.netloc
    query = "&".join(
        q
        for q in parts.query.split("&")
        if q and not re.match(r"(?i)(password|passwd|pwd|token|secret|key)=", q)
    )
    if netloc == parts.netloc and query == parts.query:
        return uri
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def store_root_for(project_dir: Path) -> Path:
    """The project's ductwork directory (``DUCTWORK_STORE`` or ``<project>/.ductwork``)."""
    from ductwork.config import load_settings

    project_dir = Path(project_dir).absolute()
    return load_settings(project_dir).store_path(project_dir).absolute()


def history_tag(alias: str) -> str:
    return f"ductwork.{alias}_history"


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        msg = (
            f"'{name}' is not a usable model name: use letters, digits, '.', '_' and '-' "
            "(it is written as NAME@ALIAS and NAME/VERSION)"
        )
        raise UsageError(msg)
    return name


def check_alias(alias: str) -> str:
    if not ALIAS_RE.match(alias) or alias.lower() == "latest" or re.match(r"^[vV]\d+$", alias):
        msg = (
            f"'{alias}' is not a usable alias: use letters, digits, '_' and '-'; "
            "'latest' and 'v<number>' are reserved by MLflow"
        )
        raise UsageError(msg)
    return alias


def metric_key(key: str) -> str:
    """A valid MLflow metric / param key: other characters become '_' (at most 250 long)."""
    text = _KEY_BAD.sub("_", key).strip(" ")
    text = re.sub(r"\.{2,}", ".", text).strip(".") or "_"
    return text[:_MAX_KEY]


def flat_metrics(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested dicts of numbers as ``{"a.b": 1.0}``; non-numbers, bools and NaN are left out."""
    out: dict[str, float] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flat_metrics(v, key + "."))
        elif isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out[metric_key(key)] = float(v)
    return out


# ------------------------------------------------------------------------------ MLflow access
def _mlflow() -> Any:
    """Import MLflow quietly (telemetry off, no URL prints)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    from ductwork.errors import import_optional

    import_optional("mlflow", extra="ml", feature="the MLflow model registry")
    import mlflow

    with contextlib.suppress(Exception):  # imported earlier with telemetry on: turn it off
        import mlflow.telemetry as telemetry

        if telemetry.get_telemetry_client() is not None:
            reset: Any = telemetry.set_telemetry_client
            reset()
    return mlflow


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence MLflow's INFO logs ("Creating initial MLflow database tables...") and warnings."""
    loggers = [logging.getLogger(n) for n in ("mlflow", "alembic", "sqlalchemy")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.WARNING if lg.name != "mlflow" else logging.ERROR)
        with warnings.catch_warnings():
            for module in ("mlflow", "sqlalchemy", "alembic", "pydantic", "pandas", "skops"):
                warnings.filterwarnings("ignore", module=rf"{module}(\.|$)")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _error_code(exc: BaseException) -> str:
    return str(getattr(exc, "error_code", "") or "")


def _missing(exc: BaseException) -> bool:
    """MLflow's "no such model / version / alias" errors."""
    code = _error_code(exc)
    if code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
        return True
    text = str(exc).lower()
    return code == "INVALID_PARAMETER_VALUE" and (
        "not found" in text or "does not exist" in text or "no model version" in text
    )


@dataclass
class Registry:
    """An MLflow client bound to one tracking (and registry) URI."""

    store_root: Path
    uri: str
    _client: Any = field(default=None, repr=False)

    @classmethod
    def open(cls, store_root: Path) -> Registry:
        return cls(Path(store_root).absolute(), tracking_uri(store_root))

    @classmethod
    def for_project(cls, project_dir: Path | None) -> Registry:
        return cls.open(store_root_for(project_dir or Path.cwd()))

    @property
    def embedded(self) -> bool:
        return self.uri == embedded_uri(self.store_root)

    @property
    def public(self) -> str:
        return public_uri(self.uri)

    @property
    def exists(self) -> bool:
        """False only for an embedded store that was never written (nothing registered yet)."""
        return not self.embedded or (self.store_root / "mlflow" / "mlflow.db").is_file()

    @property
    def client(self) -> Any:
        if self._client is None:
            mlflow = _mlflow()
            with quiet(), self._default_artifact_root():
                self._client = mlflow.MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    @contextlib.contextmanager
    def _default_artifact_root(self) -> Iterator[None]:
        """Make the embedded store's default artifact root ours, not ``./mlruns`` in the cwd.

        MLflow's SQL store takes it from ``_MLFLOW_SERVER_ARTIFACT_ROOT`` (what ``mlflow
        server --default-artifact-root`` sets) when the store is built, which the client does
        on construction; the Default experiment (id 0) made with a new database gets it.
        """
        if not self.embedded:
            yield
            return
        root = artifact_root(self.store_root)
        root.mkdir(parents=True, exist_ok=True)
        key = "_MLFLOW_SERVER_ARTIFACT_ROOT"
        with _FLUENT_LOCK:
            saved = os.environ.get(key)
            os.environ[key] = root.as_uri()
            try:
                yield
            finally:
                if saved is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = saved

    @contextlib.contextmanager
    def calling(self, what: str) -> Iterator[None]:
        """Run MLflow calls quietly; turn connection failures into a clear SourceError."""
        from mlflow.exceptions import MlflowException

        try:
            with quiet():
                yield
        except MlflowException as exc:
            text = str(exc)
            if self.public != self.uri and self._scrub(text) != text:
                msg = f"MLflow at {self.public} failed while {what}: {self._scrub(text)}"
                raise SourceError(msg) from None
            raise
        except (OSError, ConnectionError) as exc:
            msg = f"MLflow at {self.public} did not answer while {what}: {self._scrub(str(exc))}"
            raise SourceError(msg) from None

    def _scrub(self, text: str) -> str:
        """``text`` without the credentials of the tracking URI."""
        if self.public == self.uri:
            return text
        text = text.replace(self.uri, self.public)
        netloc = urlsplit(self.uri).netloc
        if "@" in netloc:
            userinfo = netloc.rsplit("@", 1)[0]
            text = text.replace(userinfo + "@", "")
            for secret in userinfo.split(":")[1:]:
                if secret:
                    text = text.replace(secret, "***")
        return text

    # -- experiments and runs ---------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        from mlflow.entities import LifecycleStage
        from mlflow.exceptions import MlflowException

        client = self.client
        with self.calling("looking up the experiment"):
            exp = client.get_experiment_by_name(name)
            if exp is not None:
                if exp.lifecycle_stage == LifecycleStage.DELETED:
                    client.restore_experiment(exp.experiment_id)
                return str(exp.experiment_id)
            location = artifact_root(self.store_root).as_uri() if self.embedded else None
            try:
                return str(client.create_experiment(name, artifact_location=location))
            except MlflowException as exc:  # created meanwhile by a concurrent stage
                exp = client.get_experiment_by_name(name)
                if exp is None:
                    raise
                _LOG.debug("experiment %s created concurrently: %s", name, exc)
                return str(exp.experiment_id)

    # -- registered models ------------------------------------------------------------------
    def model_names(self) -> list[str]:
        if not self.exists:
            return []
        with self.calling("listing models"):
            return sorted(m.name for m in _paged(self.client.search_registered_models))

    def get_model(self, name: str) -> Any:
        """The registered model, or a UsageError naming the close matches."""
        from mlflow.exceptions import MlflowException

        model = None
        if self.exists:
            try:
                with self.calling("reading the model"):
                    model = self.client.get_registered_model(name)
            except MlflowException as exc:
                if not _missing(exc):
                    raise
        if model is None:
            names = self.model_names()
            shown = ", ".join(names[:10]) + (
                f" and {len(names) - 10} more" if len(names) > 10 else ""
            )
            known = f" (registered: {shown})" if names else " (none registered yet)"
            msg = f"no registered model '{name}'{did_you_mean(name, names)}{known}"
            raise UsageError(msg, hint="List them with: ductwork models")
        return model

    def ensure_model(self, name: str, *, description: str | None, tags: Mapping[str, str]) -> Any:
        from mlflow.exceptions import MlflowException

        client = self.client
        with self.calling("registering the model"):
            try:
                model = client.get_registered_model(name)
            except MlflowException as exc:
                if not _missing(exc):
                    raise
                try:
                    client.create_registered_model(name, tags=dict(tags), description=description)
                except MlflowException as exc2:
                    if _error_code(exc2) != "RESOURCE_ALREADY_EXISTS":
                        raise
                return client.get_registered_model(name)
            if description is not None and model.description != description:
                client.update_registered_model(name, description=description)
            for k, v in tags.items():
                if model.tags.get(k) != v:
                    client.set_registered_model_tag(name, k, v)
            return client.get_registered_model(name)

    def versions(self, name: str) -> list[Any]:
        """Every version of ``name``, newest first."""
        with self.calling("listing versions"):
            found = _paged(self.client.search_model_versions, filter_string=f"name='{name}'")
        return sorted(found, key=lambda v: int(v.version), reverse=True)

    def version_by_sha(self, name: str, sha: str) -> Any | None:
        for v in self.versions(name):
            if v.tags.get(TAG_BUNDLE_SHA) == sha:
                return v
        return None

    def get_version(self, name: str, version: int | str) -> Any:
        from mlflow.exceptions import MlflowException

        self.get_model(name)
        try:
            with self.calling("reading the version"):
                return self.client.get_model_version(name, str(version))
        except MlflowException as exc:
            if not _missing(exc):
                raise
        known = ", ".join(str(v.version) for v in reversed(self.versions(name))) or "none"
        msg = f"model '{name}' has no version {version} (versions: {known})"
        raise UsageError(msg, hint=f"List them with: ductwork models {name}")

    def resolve(self, name: str, *, alias: str | None, version: int | None) -> Any | None:
        """The version an alias or number names; None when the model, alias or version is absent."""
        from mlflow.exceptions import MlflowException

        if not self.exists:
            return None
        try:
            with self.calling("resolving the model"):
                if version is not None:
                    return self.client.get_model_version(name, str(version))
                return self.client.get_model_version_by_alias(name, alias or DEFAULT_ALIAS)
        except MlflowException as exc:
            if _missing(exc):
                return None
            raise

    # -- aliases ----------------------------------------------------------------------------
    def history(self, model: Any, alias: str) -> list[int]:
        raw = str(model.tags.get(history_tag(alias), "") or "")
        return [int(p) for p in raw.split(",") if p.strip().isdigit()]

    def set_alias(self, name: str, alias: str, version: int) -> dict[str, Any]:
        """Point ``alias`` at ``version`` and append it to the alias history."""
        check_alias(alias)
        model = self.get_model(name)
        current = model.aliases.get(alias)
        current = int(current) if current is not None else None
        history = self.history(model, alias)
        if current is not None and (not history or history[-1] != current):
            history.append(current)  # moved outside ductwork: remember where it was
        changed = current != int(version)
        if changed:
            history.append(int(version))
            with self.calling("setting the alias"):
                self.client.set_registered_model_alias(name, alias, str(version))
        history = history[-MAX_HISTORY:]
        with self.calling("recording the alias history"):
            self.client.set_registered_model_tag(
                name, history_tag(alias), ",".join(str(v) for v in history)
            )
        return {
            "name": name,
            "alias": alias,
            "version": int(version),
            "previous": current,
            "changed": changed,
            "history": history,
        }


def _paged(fn: Callable[..., Any], **kwargs: Any) -> list[Any]:
    out: list[Any] = []
    token = None
    while True:
        page = fn(max_results=1000, page_token=token, **kwargs)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return out


# ------------------------------------------------------------------------------ public API
def list_models(project_dir: Path | None = None) -> list[dict[str, Any]]:
    """Registered models with their aliases and latest version."""
    reg = Registry.for_project(project_dir)
    if not reg.exists:
        return []
    with reg.calling("listing models"):
        models = _paged(reg.client.search_registered_models)
    out = []
    for m in sorted(models, key=lambda m: m.name):
        latest = max((int(v.version) for v in m.latest_versions or []), default=None)
        out.append(
            {
                "name": m.name,
                "description": m.description or "",
                "aliases": {a: int(v) for a, v in sorted((m.aliases or {}).items())},
                "latest_version": latest,
                "created": _iso(m.creation_timestamp),
                "updated": _iso(m.last_updated_timestamp),
                "tracking_uri": reg.public,
            }
        )
    return out


def list_versions(name: str, project_dir: Path | None = None) -> list[dict[str, Any]]:
    """Every version of ``name``, newest first: aliases, run, key metrics, bundle sha256."""
    reg = Registry.for_project(project_dir)
    model = reg.get_model(name)
    by_version: dict[int, list[str]] = {}
    for alias, v in (model.aliases or {}).items():
        by_version.setdefault(int(v), []).append(alias)
    runs: dict[str, dict[str, float]] = {}
    out = []
    for v in reg.versions(name):
        run_id = v.run_id or ""
        if run_id and run_id not in runs:
            runs[run_id] = _run_metrics(reg, run_id)
        out.append(
            {
                "name": name,
                "version": int(v.version),
                "aliases": sorted(by_version.get(int(v.version), [])),
                "created": _iso(v.creation_timestamp),
                "status": str(v.status),
                "run_id": run_id,
                "ductwork_run_id": v.tags.get(TAG_RUN_ID, ""),
                "pipeline": v.tags.get(TAG_PIPELINE, ""),
                "model_id": v.tags.get(TAG_MODEL_ID, ""),
                "bundle_sha256": v.tags.get(TAG_BUNDLE_SHA, ""),
                "metrics": runs.get(run_id, {}),
                "source": v.source,
            }
        )
    return out


def _run_metrics(reg: Registry, run_id: str) -> dict[str, float]:
    """The run's top-level metrics (not the per-slice ones)."""
    from mlflow.exceptions import MlflowException

    try:
        with reg.calling("reading the run"):
            metrics = reg.client.get_run(run_id).data.metrics
    except MlflowException:
        return {}
    return {k: float(v) for k, v in sorted(metrics.items()) if not k.startswith("slice.")}


def promote(
    name: str, version: int, alias: str = DEFAULT_ALIAS, project_dir: Path | None = None
) -> dict[str, Any]:
    """Point ``alias`` (default ``champion``) at ``version``; the move is kept for rollback."""
    check_alias(alias)
    reg = Registry.for_project(project_dir)
    reg.get_version(name, version)
    return reg.set_alias(name, alias, int(version))


def rollback(
    name: str, alias: str = DEFAULT_ALIAS, project_dir: Path | None = None
) -> dict[str, Any]:
    """Move ``alias`` back to the version it pointed at before the last promotion."""
    check_alias(alias)
    reg = Registry.for_project(project_dir)
    model = reg.get_model(name)
    current = model.aliases.get(alias)
    current = int(current) if current is not None else None
    history = reg.history(model, alias)
    if current is not None and history and history[-1] == current:
        history.pop()
    existing = {int(v.version) for v in reg.versions(name)}
    while history and history[-1] not in existing:
        history.pop()  # deleted versions are skipped
    if not history:
        where = f"'{name}@{alias}'" if current is not None else f"alias '{alias}' of '{name}'"
        msg = f"{where} has no earlier version to roll back to"
        raise UsageError(msg, hint=f"Move it explicitly: ductwork promote {name} VERSION")
    target = history[-1]
    with reg.calling("rolling back"):
        reg.client.set_registered_model_alias(name, alias, str(target))
        reg.client.set_registered_model_tag(
            name, history_tag(alias), ",".join(str(v) for v in history)
        )
    return {
        "name": name,
        "alias": alias,
        "version": target,
        "previous": current,
        "changed": True,
        "history": history,
    }


def fetch_bundle(
    name: str,
    alias: str | None = None,
    version: int | None = None,
    project_dir: Path | None = None,
) -> Path | None:
    """The ductwork bundle registered as ``name@alias`` or ``name/version``, on local disk.

    None when the model, alias or version does not exist. The bundle is downloaded from the
    version's MLflow run into ``<store>/models/<name>/<version>/`` once, and verified against
    the sha256 recorded with the version (a cached copy is reused only while it matches).
    """
    from ductwork.core.fingerprint import tree_digest

    if alias is not None and version is not None:
        msg = "give an alias or a version, not both"
        raise UsageError(msg)
    check_name(name)
    reg = Registry.for_project(project_dir)
    mv = reg.resolve(name, alias=alias, version=version)
    if mv is None:
        return None
    sha = mv.tags.get(TAG_BUNDLE_SHA)
    if not sha or not mv.run_id:
        msg = (
            f"model '{name}' version {mv.version} was not registered by ductwork "
            f"(it has no {TAG_BUNDLE_SHA} tag), so it has no ductwork bundle"
        )
        raise DataError(msg)
    cache = reg.store_root / "models" / name / str(mv.version)
    if (cache / META_FILE).is_file() and tree_digest(cache) == sha:
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    mlflow = _mlflow()
    with tempfile.TemporaryDirectory(dir=cache.parent, prefix=".fetch-") as tmp:
        with reg.calling("downloading the bundle"):
            local = mlflow.artifacts.download_artifacts(
                run_id=mv.run_id,
                artifact_path=BUNDLE_ARTIFACT,
                dst_path=tmp,
                tracking_uri=reg.uri,
            )
        got = tree_digest(local)
        if got != sha:
            msg = (
                f"the bundle logged with model '{name}' version {mv.version} has sha256 "
                f"{got[:12]}, but the version records {sha[:12]}: it was changed after "
                "registration, so it is not used"
            )
            raise DataError(msg)
        if cache.exists():
            shutil.rmtree(cache)
        try:
            os.replace(local, cache)
        except OSError:
            if not ((cache / META_FILE).is_file() and tree_digest(cache) == sha):
                raise  # a concurrent fetch that put the same bundle there is fine
    return cache


def _iso(ms: Any) -> str:
    if not isinstance(ms, int | float):
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------ registering
@dataclass
class Submission:
    """Everything :func:`register_bundle` logs for one pipeline run."""

    bundle: Bundle
    bundle_sha256: str
    name: str
    experiment: str
    run_name: str
    run_tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)  # artifact path -> file or dir
    example: pd.DataFrame | None = None
    aliases: list[str] = field(default_factory=lambda: [CHALLENGER])
    promote_to: str | None = None  # set only when the caller decided to promote
    description: str | None = None
    model_tags: dict[str, str] = field(default_factory=dict)
    version_tags: dict[str, str] = field(default_factory=dict)


def register_bundle(
    sub: Submission, store_root: Path, card: Callable[[dict[str, Any]], str]
) -> tuple[dict[str, Any], str]:
    """Log and register ``sub`` (or reuse the version holding the same bundle); set aliases.

    ``card`` renders the model card from the registration (it needs the version number).
    Returns the registration and the card. Aliases are set last, so an alias never points at a
    version whose run is still being written.
    """
    check_name(sub.name)
    for alias in [*sub.aliases, *([sub.promote_to] if sub.promote_to else [])]:
        check_alias(alias)
    reg = Registry.open(store_root)
    model = reg.ensure_model(sub.name, description=sub.description, tags=sub.model_tags)
    existing = reg.version_by_sha(sub.name, sub.bundle_sha256)
    wanted = list(dict.fromkeys([*sub.aliases, *([sub.promote_to] if sub.promote_to else [])]))
    if existing is not None:
        version, run_id = int(existing.version), existing.run_id or ""
        held = [a for a, v in (model.aliases or {}).items() if int(v) == version]
        wanted = list(dict.fromkeys([*held, *wanted]))
        experiment_id = ""
        if run_id:
            with contextlib.suppress(Exception), reg.calling("reading the run"):
                experiment_id = str(reg.client.get_run(run_id).info.experiment_id)
        registration = _registration(sub, reg, version, run_id, experiment_id, wanted, True)
        text = card(registration)
    else:
        experiment_id = reg.experiment_id(sub.experiment)
        with reg.calling("creating the run"):
            run = reg.client.create_run(
                experiment_id, run_name=sub.run_name, tags=dict(sub.run_tags)
            )
        run_id = run.info.run_id
        try:
            _log_run(reg, run_id, sub)
            info = _log_model(reg, run_id, experiment_id, sub)
            tags = {**sub.version_tags, TAG_BUNDLE_SHA: sub.bundle_sha256}
            # the registry resolves a models:/m-... source with a default client: scope it
            with _fluent_scope(reg.uri), reg.calling("creating the model version"):
                mv = reg.client.create_model_version(
                    sub.name,
                    source=info.model_uri,
                    run_id=run_id,
                    tags=tags,
                    model_id=getattr(info, "model_id", None),
                )
            version = int(mv.version)
            registration = _registration(sub, reg, version, run_id, experiment_id, wanted, False)
            text = card(registration)
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / CARD_ARTIFACT).write_text(text, encoding="utf-8")
                (Path(tmp) / REGISTRATION_ARTIFACT).write_text(
                    json.dumps(registration, indent=2, sort_keys=True), encoding="utf-8"
                )
                with reg.calling("logging the model card"):
                    reg.client.log_artifact(run_id, str(Path(tmp) / CARD_ARTIFACT))
                    reg.client.log_artifact(run_id, str(Path(tmp) / REGISTRATION_ARTIFACT))
            with reg.calling("describing the version"):
                reg.client.update_model_version(
                    sub.name, str(version), description=_description(text)
                )
        except BaseException:
            with contextlib.suppress(Exception), quiet():
                reg.client.set_terminated(run_id, "FAILED")
            raise
        with reg.calling("finishing the run"):
            reg.client.set_terminated(run_id, "FINISHED")
    for alias in wanted:
        reg.set_alias(sub.name, alias, version)
    return registration, text


def _registration(
    sub: Submission,
    reg: Registry,
    version: int,
    run_id: str,
    experiment_id: str,
    aliases: Sequence[str],
    reused: bool,
) -> dict[str, Any]:
    return {
        "name": sub.name,
        "version": version,
        "aliases": sorted(aliases),  # every alias on the version once this registration is done
        "run_id": run_id,
        "experiment_id": experiment_id,
        "model_uri": f"models:/{sub.name}/{version}",
        "tracking_uri": reg.public,
        "bundle_sha256": sub.bundle_sha256,
        "model_id": sub.bundle.meta.model_id,
        "promoted": sub.promote_to is not None,
        "reused": reused,
    }


def _description(card: str) -> str:
    if len(card) <= MAX_DESCRIPTION:
        return card
    note = f"\n\n… (truncated: the full card is the run artifact `{CARD_ARTIFACT}`)\n"
    return card[: MAX_DESCRIPTION - len(note)] + note


def _log_run(reg: Registry, run_id: str, sub: Submission) -> None:
    from mlflow.entities import Metric, Param

    now = int(datetime.now(tz=UTC).timestamp() * 1000)
    params = [
        Param(metric_key(k), _param_value(v))
        for k, v in sorted(sub.params.items())
        if v is not None
    ]
    metrics = [
        Metric(metric_key(k), float(v), now, 0)
        for k, v in sorted(sub.metrics.items())
        if math.isfinite(v)
    ]
    with reg.calling("logging params and metrics"):
        for i in range(0, len(params), 100):
            reg.client.log_batch(run_id, params=params[i : i + 100])
        for i in range(0, len(metrics), 1000):
            reg.client.log_batch(run_id, metrics=metrics[i : i + 1000])
        reg.client.log_artifacts(run_id, str(sub.bundle.path), BUNDLE_ARTIFACT)
        for path, local in sub.artifacts.items():
            if local.is_dir():
                reg.client.log_artifacts(run_id, str(local), path)
            elif local.is_file():
                parent = str(Path(path).parent) if Path(path).parent != Path(".") else None
                if Path(path).name == local.name:
                    reg.client.log_artifact(run_id, str(local), parent)
                else:
                    with tempfile.TemporaryDirectory() as tmp:
                        named = Path(tmp) / Path(path).name
                        shutil.copyfile(local, named)
                        reg.client.log_artifact(run_id, str(named), parent)


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:_MAX_PARAM_VALUE]


# ------------------------------------------------------------------------------ the MLflow model
@contextlib.contextmanager
def _fluent_scope(uri: str, experiment_id: str | None = None) -> Iterator[None]:
    """Point MLflow's process-wide (fluent) state at ``uri`` and restore it afterwards.

    ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` into the environment, and
    ``log_model`` creates its logged model in the *active* experiment (not the run's): both
    are set for the call and restored after.
    """
    mlflow = _mlflow()
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils
    import mlflow.tracking.fluent as fluent_module

    fluent: Any = fluent_module  # its module globals are the fluent API's state

    env_keys = (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_REGISTRY_URI",
        "MLFLOW_EXPERIMENT_ID",
        "MLFLOW_EXPERIMENT_NAME",
    )
    with _FLUENT_LOCK:
        saved_env = {k: os.environ.get(k) for k in env_keys}
        saved_tracking = getattr(tracking_utils, "_tracking_uri", None)
        saved_registry = getattr(registry_utils, "_registry_uri", None)
        saved_experiment = getattr(fluent, "_active_experiment_id", None)
        try:
            for k in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
                os.environ.pop(k, None)
            fluent._active_experiment_id = experiment_id
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            yield
        finally:
            mlflow.set_tracking_uri(saved_tracking)
            registry_utils._registry_uri = saved_registry
            fluent._active_experiment_id = saved_experiment
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _log_model(reg: Registry, run_id: str, experiment_id: str, sub: Submission) -> Any:
    """Log the bundle's fitted Pipeline as an MLflow sklearn model (skops format)."""
    import skops.io as sio
    from mlflow.models import infer_signature
    from mlflow.models.signature import ModelSignature

    bundle = sub.bundle
    model = bundle.model  # sha-verified, allow-listed skops load
    trusted = sorted(sio.get_untrusted_types(file=bundle.path / MODEL_FILE))
    example = sub.example
    signature = None
    if example is not None:
        predictions = model.predict(example)
        with quiet():
            inferred = infer_signature(example, predictions)
        signature = ModelSignature(inputs=input_signature(bundle), outputs=inferred.outputs)
    mlflow = _mlflow()
    with _fluent_scope(reg.uri, experiment_id), reg.calling("logging the model"):
        return mlflow.sklearn.log_model(
            model,
            name=MODEL_ARTIFACT,
            run_id=run_id,
            signature=signature,
            input_example=example,
            serialization_format="skops",
            skops_trusted_types=trusted,
            pip_requirements=pip_requirements(bundle, trusted),
            metadata={"ductwork_model_id": bundle.meta.model_id, "task": bundle.meta.task},
        )


def input_signature(bundle: Bundle) -> Any:
    """The MLflow input schema from the bundle's input contract.

    Integer columns that may be null are ``double`` (pandas has no null int64), so a batch
    with missing values passes MLflow's schema check; numbers are ``long`` / ``double``.
    """
    from mlflow.types import ColSpec, Schema

    cols: list[Any] = []
    for spec in bundle.meta.input_schema:
        dtype = spec.dtype
        if spec.kind == "boolean":
            kind = "boolean"
        elif spec.kind == "numeric":
            is_int = dtype.startswith(("Int", "UInt"))
            kind = "long" if is_int and not spec.nullable else "double"
        elif spec.kind == "string":
            kind = "string"
        elif spec.kind == "temporal":
            kind = "datetime"
        else:
            kind = "string"
        cols.append(ColSpec(kind, spec.name))
    return Schema(cols)


def example_frame(bundle: Bundle, rows: Any = None, n: int = 5) -> pd.DataFrame:
    """``n`` input rows as pandas, typed as :func:`input_signature` says.

    From ``rows`` (a Polars frame of real rows: the first that meet the input contract) when
    given, else built from the training reference statistics (quantiles, frequent categories).
    """
    import polars as pl

    frame: pl.DataFrame | None = None
    if rows is not None:
        cols = bundle.meta.input_columns
        if all(c in rows.columns for c in cols):
            valid, _ = bundle.validate(rows.select(cols).head(max(n * 20, 100)))
            if valid.height:
                frame = valid.head(n)
    if frame is None:
        frame = _synthetic_rows(bundle, n)
    pdf = frame.to_pandas()
    for spec in bundle.meta.input_schema:
        if spec.kind == "numeric" and (spec.nullable or not spec.dtype.startswith(("Int", "UInt"))):
            pdf[spec.name] = pdf[spec.name].astype("float64")
        elif spec.kind == "numeric":
            pdf[spec.name] = pdf[spec.name].astype("int64")
    return pdf


def _synthetic_rows(bundle: Bundle, n: int) -> Any:
    import polars as pl

    from ductwork.ml.bundle import _dtype

    ref = bundle.meta.reference.get("features") or {}
    qs = ("0.1", "0.25", "0.5", "0.75", "0.9")
    columns: dict[str, pl.Series] = {}
    for spec in bundle.meta.input_schema:
        stats = ref.get(spec.name) or {}
        values: list[Any]
        if spec.kind == "numeric":
            quantiles = stats.get("quantiles") or {}
            if all(q in quantiles for q in qs):
                values = [quantiles[q] for q in qs]
            elif spec.min is not None and spec.max is not None:
                values = [spec.min + (spec.max - spec.min) * i / 4 for i in range(5)]
            else:
                values = [0.0] * 5
            if spec.dtype.startswith(("Int", "UInt")):
                values = [round(v) for v in values]
        elif spec.kind == "boolean":
            values = [True, False, True, False, True]
        elif spec.kind == "string":
            cats = list((stats.get("frequencies") or {}).keys()) or spec.categories or [""]
            values = [cats[i % len(cats)] for i in range(5)]
        elif spec.kind == "temporal":
            values = [datetime(2000, 1, 1)] * 5  # cast to the column type below
        else:
            values = [None] * 5
        values = (values * (n // 5 + 1))[:n]
        target = _dtype(spec.dtype)
        series = pl.Series(spec.name, values, strict=False)
        if target is not None:
            series = series.cast(target, strict=False)
        columns[spec.name] = series
    return pl.DataFrame(columns)


def pip_requirements(bundle: Bundle, trusted_types: Sequence[str] = ()) -> list[str]:
    """Pinned requirements of the logged model, from the bundle's recorded library versions.

    Given explicitly so MLflow does not infer them (that runs a subprocess and is slow).
    """
    from importlib.metadata import PackageNotFoundError, version

    versions = dict(bundle.meta.versions)
    needed = ["scikit-learn", "numpy", "skops", "pandas", "polars"]
    names = " ".join([bundle.meta.estimator, *trusted_types])
    needed += [lib for lib in ("xgboost", "lightgbm") if lib in names]
    if "ductwork." in names:
        needed.append("ductwork")
    out = []
    for dist in needed:
        pinned = versions.get(dist)
        if pinned is None:
            try:
                pinned = version(dist)
            except PackageNotFoundError:
                continue
        out.append(f"{dist}=={pinned}")
    return out


def registry_stamp(ref: str, project_dir: Path | None = None) -> str:
    """What ``NAME@ALIAS`` / ``NAME/VERSION`` points at now: its bundle sha256, '' if nothing.

    Stages that read the registry (evaluate's champion, predict's model) put this in their
    fingerprint, so a promotion or rollback re-runs them. It is computed on every plan, so for
    a SQLite registry (the embedded default) it is one read-only query of MLflow's tables
    (``registered_model_aliases``, ``model_version_tags``) and no MLflow import: about a
    millisecond instead of seconds. Other registries are asked through the MLflow client.
    """
    import sqlite3
    from urllib.parse import unquote

    from ductwork.ml.resolve import parse_ref

    name, alias, version = parse_ref(ref)
    reg = Registry.for_project(project_dir)
    if reg.uri.startswith("sqlite:///"):
        db = Path(unquote(reg.uri[len("sqlite:///") :]))
        if not db.is_file():
            return ""
        try:
            con = sqlite3.connect(f"file:{db.as_posix()}?mode=ro", uri=True, timeout=10)
            try:
                if alias is not None:
                    row = con.execute(
                        "select version from registered_model_aliases where name = ? and alias = ?",
                        (name, alias),
                    ).fetchone()
                    if row is None:
                        return ""
                    version = int(row[0])
                row = con.execute(
                    "select value from model_version_tags where name = ? and version = ? "
                    "and key = ?",
                    (name, version, TAG_BUNDLE_SHA),
                ).fetchone()
            finally:
                con.close()
        except sqlite3.Error:
            pass  # an older or newer MLflow schema: ask MLflow itself
        else:
            return f"{name}/{version}:{row[0]}" if row else f"{name}/{version}"
    mv = reg.resolve(name, alias=alias, version=version)
    if mv is None:
        return ""
    return f"{name}/{mv.version}:{mv.tags.get(TAG_BUNDLE_SHA, '')}"
