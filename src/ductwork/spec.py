"""The pipeline file: ``pipeline.yaml`` -> a typed, validated :class:`~ductwork.core.graph.Pipeline`.

One pydantic model per level drives validation, the JSON Schema and the errors. Every problem is
reported at once, each as ``file:line:col: message`` with a "did you mean" where one is close::

    3 errors in pipeline.yaml:
      pipeline.yaml:7:5: stage 'flights': unknown param 'pth' - did you mean 'path'?
      pipeline.yaml:12:11: stage 'joined': input 'wether' names no stage - did you mean 'weather'?
      pipeline.yaml:20:15: undefined environment variable 'PG_URL' in ${env:PG_URL}

A pipeline built in Python goes through the same :func:`build_pipeline`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ductwork.core.contract import StageKind
from ductwork.core.graph import ExecutorConfig, InputRef, Pipeline, Resources, StageNode
from ductwork.errors import DuctworkError, Location, SpecError, SpecIssue, did_you_mean

SECRETISH = re.compile(r"url|password|passwd|secret|token|key|auth|dsn", re.I)
_CREDENTIALS = re.compile(r"(://[^:/@\s]+):[^@/\s]+@")


def redact(text: str) -> str:
    """Hide passwords in URLs (``scheme://user:***@host``)."""
    return _CREDENTIALS.sub(r"\1:***@", text)


NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ENV_RE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_MEMORY_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "k": 1024, "ki": 1024, "kib": 1024,
    "m": 1024**2, "mi": 1024**2, "mib": 1024**2,
    "g": 1024**3, "gi": 1024**3, "gib": 1024**3,
    "t": 1024**4, "ti": 1024**4, "tib": 1024**4,
}  # fmt: skip
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_memory(value: Any) -> int:
    """``4GiB``, ``512MiB``, ``2GB`` or a number of bytes -> bytes."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return int(value)
    m = _MEMORY_RE.match(str(value)) if isinstance(value, str) else None
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _MEMORY_UNITS or float(m.group(1)) <= 0:
        msg = f"memory {value!r} is not a size: write e.g. 512MiB, 4GiB, 2GB or a number of bytes"
        raise ValueError(msg)
    return int(float(m.group(1)) * _MEMORY_UNITS[unit])


def parse_duration(value: Any) -> float:
    """``10s``, ``1m``, ``500ms``, ``2h`` or a number of seconds -> seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    m = _DURATION_RE.match(value) if isinstance(value, str) else None
    if m is None:
        msg = f"{value!r} is not a duration: write e.g. 500ms, 10s, 1m, 2h or a number of seconds"
        raise ValueError(msg)
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


class ResourcesEntry(BaseModel):
    """``resources:`` of a stage: what one attempt needs, mapped to each executor."""

    model_config = ConfigDict(extra="forbid")

    cpus: float | None = Field(default=None, gt=0, description="CPU cores (fractions allowed).")
    memory: int | str | None = Field(
        default=None, description="Memory, e.g. 512MiB, 4GiB, 2GB, or bytes."
    )
    gpus: float | None = Field(default=None, ge=0, description="GPUs (fractions allowed).")

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: int | str | None) -> int | None:
        return None if v is None else parse_memory(v)


class StageEntry(BaseModel):
    """One item of ``stages:``."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    name: str = Field(description="Unique identifier of the stage (letters, digits, _).")
    kind: str = Field(
        description="Stage kind: extract, validate, transform, load, profile, python."
    )
    inputs: list[str] | dict[str, str] | None = Field(
        default=None,
        description="Stage outputs this stage reads: `stage` or `stage.output`; "
        "a mapping gives them local names. Default: the previous stage.",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="The kind's params.")
    expect: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Invariants on output tables, in the validate vocabulary "
        "(add `output: name` for a non-main output).",
    )
    profiles: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Param overrides per profile, chosen by DUCTWORK_PROFILE (e.g. prod).",
    )
    uses: Any = Field(default=None, description="kind: python — `package.module:function`.")
    cache: bool = Field(default=True, description="Reuse outputs when the fingerprint matches.")
    after: list[str] = Field(
        default_factory=list,
        description="Stages that must finish first although no data is passed "
        "(e.g. read back a table that a load stage writes).",
    )
    description: str = ""
    resources: ResourcesEntry | None = Field(
        default=None,
        description="What the stage needs: {cpus, memory, gpus} (not part of the fingerprint).",
    )
    retries: int = Field(
        default=0,
        ge=0,
        description="Re-run a failed attempt this many times, for transient failures only "
        "(a worker died, OSError, unexpected exceptions; never data or spec errors).",
    )
    retry_delay: float | str = Field(
        default=0.0, description="Wait between attempts: 10s, 1m, 500ms or seconds."
    )

    @field_validator("retry_delay")
    @classmethod
    def _retry_delay(cls, v: float | str) -> float:
        return parse_duration(v)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            msg = f"stage name '{v}' must be an identifier (letters, digits and _, not starting with a digit)"
            raise ValueError(msg)
        return v


EXECUTOR_KINDS = ("local", "ray", "prefect")


class ExecutorEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(default="local", description="local | ray | prefect (docs/executors.md).")
    workers: int = Field(default=2, ge=1, description="How many stages may run at once.")
    pool: str = Field(
        default="thread", pattern="^(thread|process)$", description="thread | process"
    )
    address: str | None = Field(
        default=None,
        description="kind: ray — the cluster: local (a cluster for the run, the default), "
        "auto, host:port or ray://host:port.",
    )

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in EXECUTOR_KINDS:
            msg = f"unknown executor '{v}'{did_you_mean(v, EXECUTOR_KINDS)} (known: {', '.join(EXECUTOR_KINDS)})"
            raise ValueError(msg)
        return v


class PipelineFile(BaseModel):
    """The whole pipeline file."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str = Field(description="Name of the pipeline.")
    description: str = ""
    executor: ExecutorEntry = Field(default_factory=ExecutorEntry)
    allow_outside_project: bool = Field(
        default=False, description="Allow paths with '..' that leave the project directory."
    )
    stages: list[StageEntry] = Field(min_length=1)


# -- YAML with locations ----------------------------------------------------------------------


class _Located:
    """Finds the file position of a path of keys/indices in a ruamel round-trip document."""

    def __init__(self, doc: Any, file: str) -> None:
        self.doc = doc
        self.file = file

    def __call__(self, path: Sequence[str | int]) -> Location:
        node: Any = self.doc
        best = (0, 0)
        if hasattr(node, "lc"):
            best = (node.lc.line, node.lc.col)
        for part in path:
            try:
                lc: Any = getattr(node, "lc", None)
                if isinstance(node, Mapping) and part in node:
                    child = node[part]
                    best = lc.key(part) if isinstance(child, Mapping | list) else lc.value(part)
                    node = child
                elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                    best = lc.item(part)
                    node = node[part]
                else:
                    break
            except (AttributeError, KeyError, TypeError):
                break
        return Location(self.file, best[0] + 1, best[1] + 1)

    def key(self, path: Sequence[str | int]) -> Location:
        """Position of the key itself (for unknown-key errors)."""
        parent = self.doc
        for part in path[:-1]:
            try:
                parent = parent[part]
            except (KeyError, IndexError, TypeError):
                return self(path)
        last = path[-1]
        try:
            line, col = parent.lc.key(last)
            return Location(self.file, line + 1, col + 1)
        except (AttributeError, KeyError, TypeError):
            return self(path)


def _plain(value: Any) -> Any:
    """ruamel containers/scalars -> plain dict, list, str, int, float, bool, None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def interpolate_env(
    value: Any,
    path: tuple[str | int, ...],
    issues: list[tuple[tuple[str | int, ...], str]],
    environ: Mapping[str, str],
) -> Any:
    """Replace ``${env:NAME}`` / ``${env:NAME:-default}`` in strings, collecting undefined names."""
    if isinstance(value, dict):
        return {k: interpolate_env(v, (*path, k), issues, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate_env(v, (*path, i), issues, environ) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        issues.append((path, f"undefined environment variable '{name}' in ${{env:{name}}}"))
        return ""

    return ENV_RE.sub(sub, value)


def _pydantic_issues(
    exc: ValidationError,
    prefix: tuple[str | int, ...],
    locate: _Located | None,
    file: str,
    what: str,
    fields: Sequence[str] = (),
) -> list[SpecIssue]:
    out = []
    for err in exc.errors():
        loc = (*prefix, *err["loc"])
        where = (
            (locate.key(loc) if err["type"] == "extra_forbidden" else locate(loc))
            if locate
            else Location(file)
        )
        field = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            last = str(err["loc"][-1]) if err["loc"] else field
            choices = fields if len(err["loc"]) == 1 else _nested_keys(err["loc"][:-1])
            msg = f"{what}unknown {'param' if 'params' in prefix else 'key'} '{last}'{did_you_mean(last, choices)}"
            if choices:
                msg += f" (known: {', '.join(choices)})"
        elif err["type"] == "missing":
            msg = f"{what}missing required {'param' if 'params' in prefix else 'key'} '{field}'"
        else:
            text = err["msg"]
            if text.startswith("Value error, "):
                text = text[len("Value error, ") :]
            msg = f"{what}{field}: {text}" if field else f"{what}{text}"
            if (
                err["type"] not in ("value_error", "assertion_error")
                and "input" in err
                and not SECRETISH.search(field)
                and isinstance(err["input"], str | int | float | bool)
            ):
                shown = redact(repr(err["input"]))
                msg += f" (got {shown[:60]})"
        out.append(SpecIssue(where, msg))
    return out


def _nested_keys(path: Sequence[str | int]) -> list[str]:
    """The keys allowed at a nested place of the pipeline file (for "did you mean")."""
    import typing

    model: Any = PipelineFile
    for part in path:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        found = [
            a
            for a in (field.annotation, *typing.get_args(field.annotation))
            for a in (a, *typing.get_args(a))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if not found:
            return []
        model = found[0]
    return list(model.model_fields)


def load_yaml(path: Path) -> tuple[Any, _Located]:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError

    file = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        msg = f"pipeline file not found: {path}"
        raise DuctworkError(
            msg, hint="Pass the path of a pipeline.yaml, or run `ductwork init`."
        ) from None
    except UnicodeDecodeError as exc:
        msg = f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise DuctworkError(msg) from None
    yaml = YAML(typ="rt")
    try:
        doc = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file)
        problem = exc.problem or exc.context or "invalid YAML"
        raise SpecError([SpecIssue(loc, f"invalid YAML: {problem}")], source=file) from None
    if not isinstance(doc, Mapping):
        raise SpecError(
            [
                SpecIssue(
                    Location(file, 1, 1),
                    "a pipeline file must be a mapping with 'pipeline:' and 'stages:'",
                )
            ],
            source=file,
        )
    return doc, _Located(doc, file)


def load_pipeline(
    path: str | os.PathLike[str],
    *,
    profile: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Pipeline:
    """Read, interpolate and validate a pipeline file."""
    spec_path = Path(path).absolute()
    doc, locate = load_yaml(spec_path)
    return build_pipeline(
        _plain(doc),
        project_dir=spec_path.parent,
        spec_path=spec_path,
        profile=profile,
        environ=os.environ if environ is None else environ,
        locate=locate,
    )


def build_pipeline(
    data: Mapping[str, Any],
    *,
    project_dir: Path,
    spec_path: Path | None = None,
    profile: str | None = None,
    environ: Mapping[str, str] | None = None,
    locate: _Located | None = None,
    kinds: Mapping[str, type[StageKind[Any]]] | None = None,
) -> Pipeline:
    """Validate plain pipeline data (from YAML or Python) into a Pipeline, reporting all errors."""
    from ductwork.stages.registry import KINDS, get_kind

    file = str(spec_path) if spec_path else f"pipeline '{data.get('pipeline', '?')}'"
    env_issues: list[tuple[tuple[str | int, ...], str]] = []
    data = interpolate_env(dict(data), (), env_issues, os.environ if environ is None else environ)
    issues = [SpecIssue(locate(p) if locate else Location(file), m) for p, m in env_issues]
    try:
        spec = PipelineFile.model_validate(data)
    except ValidationError as exc:
        issues += _pydantic_issues(exc, (), locate, file, "", list(PipelineFile.model_fields))
        # per-stage errors are still worth reporting when only the top level is wrong
        raise SpecError(issues, source=file) from None

    nodes: list[StageNode] = []
    prev: StageNode | None = None
    for i, entry in enumerate(spec.stages):
        where = f"stage '{entry.name}': "
        base: tuple[str | int, ...] = ("stages", i)
        loc = locate((*base, "name")) if locate else Location(file)
        try:
            cls = (kinds or {}).get(entry.kind) or get_kind(entry.kind)
        except DuctworkError:
            issues.append(
                SpecIssue(
                    locate((*base, "kind")) if locate else loc,
                    f"{where}unknown stage kind '{entry.kind}'{did_you_mean(entry.kind, KINDS)}"
                    f" (known: {', '.join(sorted(KINDS))})",
                )
            )
            prev = None
            continue
        except ImportError as exc:
            issues.append(
                SpecIssue(loc, f"{where}stage kind '{entry.kind}' cannot be imported: {exc}")
            )
            prev = None
            continue
        params = dict(entry.params)
        if profile and profile in entry.profiles:
            params.update(entry.profiles[profile])
        if entry.uses is not None:
            if entry.kind != "python":
                issues.append(
                    SpecIssue(
                        locate((*base, "uses")) if locate else loc,
                        f"{where}'uses' is only for kind: python",
                    )
                )
            params["uses"] = entry.uses
        try:
            validated = cls.Params.model_validate(params)
        except ValidationError as exc:
            issues += _pydantic_issues(
                exc, (*base, "params"), locate, file, where, _param_names(cls.Params)
            )
            prev = None
            continue
        kind = cls()
        try:
            outputs = kind.declared_outputs(validated)
        except DuctworkError as exc:
            issues.append(SpecIssue(loc, f"{where}{exc.message}"))
            continue
        # inputs
        inputs: dict[str, InputRef] = {}
        if entry.inputs is None:
            if cls.max_inputs != 0 and prev is not None:
                inputs[prev.name] = InputRef(prev.name)
        elif isinstance(entry.inputs, list):
            for ref_text in entry.inputs:
                inputs[ref_text.replace(".", "_")] = InputRef.parse(ref_text)
        else:
            for local, ref_text in entry.inputs.items():
                if not NAME_RE.match(local):
                    issues.append(
                        SpecIssue(
                            locate((*base, "inputs")) if locate else loc,
                            f"{where}input name '{local}' must be an identifier",
                        )
                    )
                inputs[local] = InputRef.parse(ref_text)
        n = len(inputs)
        if n < cls.min_inputs or (cls.max_inputs is not None and n > cls.max_inputs):
            want = (
                f"exactly {cls.min_inputs}"
                if cls.max_inputs == cls.min_inputs
                else f"at least {cls.min_inputs}"
                if cls.max_inputs is None
                else f"{cls.min_inputs} to {cls.max_inputs}"
            )
            hint = (
                " (it is the first stage, so there is no previous stage to default to)"
                if n == 0 and i == 0
                else ""
            )
            issues.append(
                SpecIssue(
                    locate((*base, "inputs")) if locate else loc,
                    f"{where}kind '{entry.kind}' takes {want} input(s), got {n}{hint}",
                )
            )
        # expect rules: same vocabulary as validate
        for j, rule in enumerate(entry.expect):
            issues += _check_rule(rule, (*base, "expect", j), locate, file, where, outputs)
        node = StageNode(
            name=entry.name,
            kind=entry.kind,
            kind_cls=cls,
            kind_path=KINDS.get(entry.kind, f"{cls.__module__}:{cls.__qualname__}"),
            params=validated,
            inputs=inputs,
            outputs=outputs,
            expect=[dict(r) for r in entry.expect],
            cache=entry.cache,
            description=entry.description,
            location=loc,
            after=list(entry.after),
            resources=Resources(**entry.resources.model_dump()) if entry.resources else None,
            retries=entry.retries,
            retry_delay=float(entry.retry_delay),
        )
        nodes.append(node)
        prev = node
    if issues:
        raise SpecError(issues, source=file)
    try:
        return Pipeline(
            spec.pipeline,
            nodes,
            project_dir=project_dir,
            spec_path=spec_path,
            executor=ExecutorConfig(
                spec.executor.kind,
                spec.executor.workers,
                spec.executor.pool,
                spec.executor.address,
            ),
            allow_outside_project=spec.allow_outside_project,
        )
    except SpecError as exc:
        raise SpecError(issues + exc.issues, source=file) from None


def _param_names(model: type[BaseModel]) -> list[str]:
    """The names users write: aliases where a field has one (``schema`` for ``schema_``)."""
    return [f.alias or n for n, f in model.model_fields.items()]


def _check_rule(
    rule: Mapping[str, Any],
    path: tuple[str | int, ...],
    locate: _Located | None,
    file: str,
    where: str,
    outputs: Mapping[str, Any],
) -> list[SpecIssue]:
    from ductwork.core.checks import parse_checks

    r = dict(rule)
    out = r.pop("output", None)
    loc = locate(path) if locate else Location(file)
    if out is not None and out not in outputs:
        return [
            SpecIssue(
                loc, f"{where}expect: unknown output '{out}'{did_you_mean(str(out), outputs)}"
            )
        ]
    try:
        parse_checks([r])
    except ValidationError as exc:
        return [SpecIssue(loc, f"{where}expect: {e['msg']}") for e in exc.errors()]
    except DuctworkError as exc:
        return [SpecIssue(loc, f"{where}expect: {exc.message}")]
    return []


def pipeline_json_schema() -> dict[str, Any]:
    """JSON Schema of the pipeline file (for editors: yaml-language-server)."""
    return PipelineFile.model_json_schema()
