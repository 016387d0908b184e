"""The structured answer of a generate stage: declared in YAML, validated with pydantic.

A stage declares its answer as ``field -> spec``::

    answer:
      category: {type: string, enum: [text, files, math, other], description: "..."}
      confidence: {type: number, minimum: 0, maximum: 1}
      tags: {type: array, items: {type: string}}
      summary: {type: string, required: false}

From that one declaration come three things that must agree: the JSON Schema sent to the
model (:meth:`AnswerSpec.json_schema`), the pydantic model that validates what comes back
(:meth:`AnswerSpec.model`, built with ``create_model``: enums as ``Literal``, bounds as
``Field(ge=, le=)``) and the Polars column types of the ``llm_validated`` table
(:meth:`AnswerSpec.polars_schema`). Keeping them derived from one spec is what makes an
answer that validates land in its column with the declared type.

Validation is pydantic's lax mode (``"3"`` is accepted for an integer, as a model may quote
numbers) except for enums, which must match exactly. Keys the schema does not declare are
dropped rather than rejected: they carry nothing a column could hold, and re-asking for them
would cost a call. Errors in a spec name the field (``answer.tags.items: ...``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

if TYPE_CHECKING:
    import polars as pl

FieldType = Literal["string", "integer", "number", "boolean", "array", "object"]
FIELD_TYPES: tuple[str, ...] = ("string", "integer", "number", "boolean", "array", "object")
_KEYS = ("type", "enum", "description", "minimum", "maximum", "items", "properties", "required")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class AnswerSpecError(ValueError):
    """A malformed ``answer:`` declaration; the message names the field."""


@dataclass(frozen=True)
class FieldSpec:
    """One declared field of the answer (or an array's items, or an object's property)."""

    type: FieldType
    enum: tuple[Any, ...] | None = None
    description: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    items: FieldSpec | None = None
    properties: tuple[tuple[str, FieldSpec], ...] | None = None
    required: bool = True

    # -- JSON Schema ---------------------------------------------------------------------
    def json_schema(self, *, nullable: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"type": [self.type, "null"] if nullable else self.type}
        if self.description:
            out["description"] = self.description
        if self.enum is not None:
            out["enum"] = [*self.enum, None] if nullable else list(self.enum)
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.items is not None:
            out["items"] = self.items.json_schema()
        if self.properties is not None:
            out.update(_object_schema(self.properties))
        return out

    # -- pydantic ------------------------------------------------------------------------
    def annotation(self, path: str) -> Any:
        """The Python type (with constraints) that validates a value of this field."""
        if self.enum is not None:
            return Literal[tuple(self.enum)]
        if self.type == "string":
            return str
        if self.type in ("integer", "number"):
            return int if self.type == "integer" else float
        if self.type == "boolean":
            return bool
        if self.type == "array":
            if self.items is None:
                return list[Any]
            inner = self.items.annotation(f"{path}.items")
            constraints = self.items.constraints()
            if constraints:
                from typing import Annotated

                inner = Annotated[inner, Field(**constraints)]
            return list[inner]  # type: ignore[valid-type]
        if self.properties is None:
            return dict[str, Any]
        return _build_model(path, self.properties)

    def constraints(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.minimum is not None:
            out["ge"] = self.minimum
        if self.maximum is not None:
            out["le"] = self.maximum
        return out

    # -- Polars --------------------------------------------------------------------------
    def polars_type(self) -> pl.DataType:
        import polars as pl

        if self.type == "string":
            return pl.String()
        if self.type == "integer":
            return pl.Int64()
        if self.type == "number":
            return pl.Float64()
        if self.type == "boolean":
            return pl.Boolean()
        if self.type == "array":
            return pl.List(self.items.polars_type() if self.items is not None else pl.String())
        if self.properties is None:
            return pl.String()  # a free-form object is kept as its JSON text
        return pl.Struct({name: spec.polars_type() for name, spec in self.properties})

    def to_column_value(self, value: Any) -> Any:
        """A validated value in the shape its Polars column holds."""
        if value is None:
            return None
        if self.type == "array":
            if self.items is None:
                return [v if isinstance(v, str) else json.dumps(v, sort_keys=True) for v in value]
            return [self.items.to_column_value(v) for v in value]
        if self.type == "object":
            if self.properties is None:
                return json.dumps(value, sort_keys=True, ensure_ascii=False)
            return {name: spec.to_column_value(value.get(name)) for name, spec in self.properties}
        if self.type == "number":
            return float(value)
        return value


def _object_schema(properties: tuple[tuple[str, FieldSpec], ...]) -> dict[str, Any]:
    """Every property listed as required, an optional one as nullable: the form OpenAI's
    strict structured outputs accept, and one that means the same to every other reader."""
    return {
        "properties": {
            name: spec.json_schema(nullable=not spec.required) for name, spec in properties
        },
        "required": [name for name, _ in properties],
        "additionalProperties": False,
    }


def _build_model(path: str, properties: tuple[tuple[str, FieldSpec], ...]) -> type[BaseModel]:
    """A pydantic model whose fields are the properties, by their declared names.

    The Python attribute names are ``f0, f1, ...`` with the declared name as the alias, so a
    field may be called ``schema``, ``json`` or ``model_id`` without clashing with BaseModel.
    """
    fields: dict[str, Any] = {}
    for i, (name, spec) in enumerate(properties):
        annotation = spec.annotation(f"{path}.{name}")
        kwargs: dict[str, Any] = {"alias": name, **spec.constraints()}
        if spec.description:
            kwargs["description"] = spec.description
        if spec.enum is not None:
            kwargs.pop("ge", None)
            kwargs.pop("le", None)
        if spec.required:
            fields[f"f{i}"] = (annotation, Field(**kwargs))
        else:
            fields[f"f{i}"] = (annotation | None, Field(default=None, **kwargs))
    model_name = "Answer" if path == "answer" else "Answer_" + re.sub(r"\W", "_", path)
    return create_model(
        model_name,
        __config__=ConfigDict(extra="ignore", populate_by_name=False),
        **fields,
    )


@dataclass(frozen=True)
class AnswerSpec:
    """The whole answer: an object with the declared fields, in declaration order."""

    fields: tuple[tuple[str, FieldSpec], ...]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.fields]

    def json_schema(self) -> dict[str, Any]:
        return {"type": "object", **_object_schema(self.fields)}

    def model(self) -> type[BaseModel]:
        return _build_model("answer", self.fields)

    def polars_schema(self) -> dict[str, pl.DataType]:
        return {name: spec.polars_type() for name, spec in self.fields}

    def validate(self, model: type[BaseModel], data: Any) -> dict[str, Any]:
        """The answer as column values, or :class:`AnswerInvalid` naming every bad field."""
        if not isinstance(data, Mapping):
            got = type(data).__name__ if data is not None else "null"
            msg = f"the answer is a JSON {_json_kind(data)} ({got}), not an object"
            raise AnswerInvalid(msg)
        try:
            parsed = model.model_validate(dict(data))
        except ValidationError as exc:
            raise AnswerInvalid(format_errors(exc)) from None
        dumped = parsed.model_dump(by_alias=True)
        return {name: spec.to_column_value(dumped.get(name)) for name, spec in self.fields}


class AnswerInvalid(ValueError):
    """An answer that breaks the declared structure; the message names the fields."""


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "null" if value is None else "value"


def format_errors(exc: ValidationError) -> str:
    """One line per problem, each naming the field: ``field 'category': Input should be ...``."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(the answer)"
        got = err.get("input")
        shown = "" if err["type"] == "missing" else f" (got {_short(got)})"
        lines.append(f"field '{loc}': {err['msg']}{shown}")
    return "; ".join(lines)


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------- parsing
def parse_answer_spec(spec: Mapping[str, Any]) -> AnswerSpec:
    """Turn the YAML ``answer:`` mapping into an :class:`AnswerSpec`; errors name the field."""
    if not isinstance(spec, Mapping) or not spec:
        msg = "answer: declare at least one field, e.g. {label: {type: string}}"
        raise AnswerSpecError(msg)
    return AnswerSpec(fields=_parse_properties(spec, "answer"))


def _parse_properties(spec: Mapping[str, Any], path: str) -> tuple[tuple[str, FieldSpec], ...]:
    out: list[tuple[str, FieldSpec]] = []
    for name, value in spec.items():
        if not isinstance(name, str) or not _NAME.match(name):
            msg = (
                f"{path}: field name {name!r} must start with a letter and hold only letters, "
                "digits and '_' (it becomes a column name)"
            )
            raise AnswerSpecError(msg)
        out.append((name, _parse_field(value, f"{path}.{name}")))
    return tuple(out)


def _parse_field(value: Any, path: str) -> FieldSpec:
    from ductwork.errors import did_you_mean

    if isinstance(value, str):  # shorthand: `summary: string`
        value = {"type": value}
    if not isinstance(value, Mapping):
        msg = f"{path}: expected a mapping like {{type: string}}, got {value!r}"
        raise AnswerSpecError(msg)
    for key in value:
        if key not in _KEYS:
            msg = (
                f"{path}: unknown key '{key}'{did_you_mean(str(key), _KEYS)} "
                f"(known: {', '.join(_KEYS)})"
            )
            raise AnswerSpecError(msg)
    kind = value.get("type", "string" if "enum" in value else None)
    if kind not in FIELD_TYPES:
        shown = "missing" if kind is None else repr(kind)
        msg = (
            f"{path}: type is {shown}{did_you_mean(str(kind), FIELD_TYPES)}; "
            f"use one of {', '.join(FIELD_TYPES)}"
        )
        raise AnswerSpecError(msg)
    description = value.get("description")
    if description is not None and not isinstance(description, str):
        msg = f"{path}: description must be text"
        raise AnswerSpecError(msg)
    required = value.get("required", True)
    if not isinstance(required, bool):
        msg = f"{path}: required must be true or false, got {required!r}"
        raise AnswerSpecError(msg)
    enum = _parse_enum(value.get("enum"), kind, path)
    minimum = _parse_bound(value, "minimum", kind, path)
    maximum = _parse_bound(value, "maximum", kind, path)
    if minimum is not None and maximum is not None and minimum > maximum:
        msg = f"{path}: minimum {minimum:g} is greater than maximum {maximum:g}"
        raise AnswerSpecError(msg)
    items = None
    if "items" in value:
        if kind != "array":
            msg = f"{path}: 'items' is for type: array (this field is {kind})"
            raise AnswerSpecError(msg)
        items = _parse_field(value["items"], f"{path}.items")
    properties = None
    if "properties" in value:
        if kind != "object":
            msg = f"{path}: 'properties' is for type: object (this field is {kind})"
            raise AnswerSpecError(msg)
        props = value["properties"]
        if not isinstance(props, Mapping) or not props:
            msg = f"{path}.properties: declare at least one field"
            raise AnswerSpecError(msg)
        properties = _parse_properties(props, path)
    return FieldSpec(
        type=kind,
        enum=enum,
        description=description,
        minimum=minimum,
        maximum=maximum,
        items=items,
        properties=properties,
        required=required,
    )


def _parse_enum(enum: Any, kind: FieldType, path: str) -> tuple[Any, ...] | None:
    if enum is None:
        return None
    if kind not in ("string", "integer", "number"):
        msg = f"{path}: enum is for string, integer or number fields (this field is {kind})"
        raise AnswerSpecError(msg)
    if not isinstance(enum, list | tuple) or not enum:
        msg = f"{path}: enum must be a non-empty list of values"
        raise AnswerSpecError(msg)
    for v in enum:
        ok = (
            isinstance(v, str)
            if kind == "string"
            else isinstance(v, int) and not isinstance(v, bool)
            if kind == "integer"
            else isinstance(v, int | float) and not isinstance(v, bool)
        )
        if not ok:
            msg = f"{path}: enum value {v!r} is not a {kind}"
            raise AnswerSpecError(msg)
    if len(set(enum)) != len(enum):
        dupes = sorted({str(v) for v in enum if list(enum).count(v) > 1})
        msg = f"{path}: enum lists {', '.join(dupes)} more than once"
        raise AnswerSpecError(msg)
    return tuple(enum)


def _parse_bound(value: Mapping[str, Any], key: str, kind: FieldType, path: str) -> float | None:
    bound = value.get(key)
    if bound is None:
        return None
    if kind not in ("integer", "number"):
        msg = f"{path}: {key} is for integer and number fields (this field is {kind})"
        raise AnswerSpecError(msg)
    if isinstance(bound, bool) or not isinstance(bound, int | float):
        msg = f"{path}: {key} must be a number, got {bound!r}"
        raise AnswerSpecError(msg)
    return bound
