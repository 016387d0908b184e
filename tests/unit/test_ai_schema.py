from __future__ import annotations

import re
from typing import Any

import polars as pl
import pytest

from ductwork.ai.schema import AnswerInvalid, AnswerSpecError, parse_answer_spec

SPEC: dict[str, Any] = {
    "category": {"type": "string", "enum": ["text", "files", "other"], "description": "kind"},
    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    "stars": {"type": "integer", "minimum": 1, "maximum": 5},
    "public": "boolean",
    "tags": {"type": "array", "items": {"type": "string"}},
    "sizes": {"type": "array", "items": {"type": "integer", "minimum": 0}},
    "author": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "schema": {"type": "string"}},
    },
    "extra": {"type": "object"},
    "note": {"type": "string", "required": False},
}
GOOD: dict[str, Any] = {
    "category": "files",
    "confidence": 0.5,
    "stars": 4,
    "public": True,
    "tags": ["io", "disk"],
    "sizes": [1, 2],
    "author": {"name": "ada", "schema": "v1"},
    "extra": {"b": 1, "a": [2]},
    "note": None,
}


def test_json_schema_is_strict_and_follows_the_declaration() -> None:
    schema = parse_answer_spec(SPEC).json_schema()
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert list(schema["properties"]) == list(SPEC)
    # every property required; the optional one nullable (OpenAI strict mode accepts only this)
    assert schema["required"] == list(SPEC)
    assert schema["properties"]["note"]["type"] == ["string", "null"]
    cat = schema["properties"]["category"]
    assert cat == {"type": "string", "description": "kind", "enum": ["text", "files", "other"]}
    assert schema["properties"]["stars"] == {"type": "integer", "minimum": 1, "maximum": 5}
    assert schema["properties"]["sizes"]["items"] == {"type": "integer", "minimum": 0}
    author = schema["properties"]["author"]
    assert author["required"] == ["name", "schema"]
    assert author["additionalProperties"] is False


def test_a_valid_answer_becomes_column_values() -> None:
    spec = parse_answer_spec(SPEC)
    values = spec.validate(spec.model(), {**GOOD, "confidence": "0.5", "unknown": 1})
    assert values["confidence"] == 0.5  # a quoted number is accepted (lax mode)
    assert "unknown" not in values  # undeclared keys are dropped, not an error
    assert values["author"] == {"name": "ada", "schema": "v1"}  # 'schema' is a fine field name
    assert values["extra"] == '{"a": [2], "b": 1}'  # a free-form object is kept as JSON text
    assert values["note"] is None
    # the values fit the declared Polars types
    frame = pl.DataFrame([values], schema=spec.polars_schema(), orient="row")
    assert frame.schema == pl.Schema(
        {
            "category": pl.String,
            "confidence": pl.Float64,
            "stars": pl.Int64,
            "public": pl.Boolean,
            "tags": pl.List(pl.String),
            "sizes": pl.List(pl.Int64),
            "author": pl.Struct({"name": pl.String, "schema": pl.String}),
            "extra": pl.String,
            "note": pl.String,
        }
    )


def test_optional_field_may_be_missing_but_a_required_one_may_not() -> None:
    spec = parse_answer_spec(SPEC)
    answer = {k: v for k, v in GOOD.items() if k != "note"}
    assert spec.validate(spec.model(), answer)["note"] is None
    answer.pop("stars")
    with pytest.raises(AnswerInvalid, match=r"field 'stars': Field required"):
        spec.validate(spec.model(), answer)


def test_invalid_answers_name_every_bad_field() -> None:
    spec = parse_answer_spec(SPEC)
    bad = {
        **GOOD,
        "category": "cooking",
        "stars": 9,
        "sizes": [1, -1],
        "author": {"name": "ada"},
    }
    with pytest.raises(AnswerInvalid) as info:
        spec.validate(spec.model(), bad)
    text = str(info.value)
    assert "field 'category': Input should be 'text', 'files' or 'other' (got \"cooking\")" in text
    assert "field 'stars': Input should be less than or equal to 5 (got 9)" in text
    assert "field 'sizes.1': Input should be greater than or equal to 0" in text
    assert "field 'author.schema': Field required" in text


def test_an_answer_that_is_not_an_object_is_invalid() -> None:
    spec = parse_answer_spec({"label": "string"})
    with pytest.raises(AnswerInvalid, match="the answer is a JSON array"):
        spec.validate(spec.model(), ["x"])


def test_number_enums_and_integer_coercion() -> None:
    spec = parse_answer_spec(
        {"level": {"type": "integer", "enum": [1, 2, 3]}, "w": {"type": "number", "enum": [0.5, 1]}}
    )
    assert spec.validate(spec.model(), {"level": 2.0, "w": 1}) == {"level": 2, "w": 1.0}
    with pytest.raises(AnswerInvalid, match="field 'level'"):
        spec.validate(spec.model(), {"level": 4, "w": 1})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "declare at least one field"),
        ({"label": {"type": "text"}}, "answer.label: type is 'text'"),
        ({"label": {"type": "strng"}}, "did you mean 'string'"),
        ({"label": {"typ": "string"}}, "answer.label: unknown key 'typ' - did you mean 'type'"),
        ({"_label": "string"}, "field name '_label' must start with a letter"),
        ({"label": {"type": "string", "enum": []}}, "answer.label: enum must be a non-empty"),
        ({"label": {"type": "string", "enum": ["a", 1]}}, "enum value 1 is not a string"),
        ({"label": {"type": "string", "enum": ["a", "a"]}}, "enum lists a more than once"),
        ({"n": {"type": "string", "minimum": 1}}, "answer.n: minimum is for integer and number"),
        ({"n": {"type": "integer", "minimum": 3, "maximum": 1}}, "minimum 3 is greater"),
        ({"xs": {"type": "array", "items": {"type": "nope"}}}, "answer.xs.items: type is 'nope'"),
        ({"o": {"type": "object", "properties": {"a": {"type": "x"}}}}, "answer.o.a: type"),
        ({"s": {"type": "string", "items": "string"}}, "'items' is for type: array"),
        ({"s": {"type": "string", "required": "no"}}, "required must be true or false"),
    ],
)
def test_spec_errors_name_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(AnswerSpecError, match=re.escape(message)):
        parse_answer_spec(spec)
