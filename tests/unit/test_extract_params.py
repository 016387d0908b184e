"""extract's params model: which params go together, and secrets kept out of the params."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from ductwork.core.fingerprint import canonical_json
from ductwork.stages.extract import ExtractParams


def parse(**params: Any) -> ExtractParams:
    return ExtractParams.model_validate(params)


def error(**params: Any) -> str:
    with pytest.raises(ValidationError) as info:
        parse(**params)
    return str(info.value)


def test_source_follows_from_the_params() -> None:
    assert parse(path="data/x.csv").resolved_source() == "files"
    assert parse(url="sqlite:///x.db", query="select 1").resolved_source() == "sql"
    assert parse(url="https://api.example.com/v1/rows").resolved_source() == "http"
    assert parse(source="files", path="s3://bucket/x.parquet").resolved_source() == "files"


def test_unknown_params_are_errors() -> None:
    assert "extra_forbidden" in error(path="x.csv", seperator=";")


def test_params_of_another_source_name_that_source() -> None:
    msg = error(path="x.csv", query="select 1")
    assert "param 'query' is for sql sources, but this stage reads files" in msg
    msg = error(url="sqlite:///x.db", query="select 1", pagination={"type": "page"})
    assert "param 'pagination' is for http sources, but this stage reads sql" in msg
    msg = error(url="https://api/x", encoding="latin1")
    assert "param 'encoding' is for files sources, but this stage reads http" in msg


def test_null_unsets_a_param_so_a_profile_can_swap_the_source() -> None:
    base = {"path": "data/rows.csv", "schema": {"id": "Int64"}}
    prod = {"path": None, "url": "https://api.example.com/rows", "records_path": "data"}
    assert parse(**{**base, **prod}).resolved_source() == "http"


def test_csv_options_on_other_formats() -> None:
    assert "params ['separator'] are for csv/tsv files" in error(path="x.parquet", separator=";")
    assert "'records_path' is for http sources and json files" in error(
        path="x.csv", records_path="data"
    )


def test_unknown_format_and_encoding_and_dtype() -> None:
    assert "cannot tell the format of 'data/x.dat'" in error(path="data/x.dat")
    assert "unknown encoding 'latin-9000'" in error(path="x.csv", encoding="latin-9000")
    msg = error(path="x.csv", schema={"n": "Int65"})
    assert "schema column 'n': unknown dtype 'Int65'" in msg


def test_encoding_names_are_normalised() -> None:
    assert parse(path="x.csv", encoding="UTF-8").encoding == "utf8"
    assert parse(path="x.csv", encoding="latin-1").encoding == "iso8859-1"
    assert parse(path="x.csv", encoding="utf8-lossy").encoding == "utf8-lossy"


def test_sql_needs_url_and_query() -> None:
    assert "a sql source needs 'url'" in error(source="sql", url="sqlite:///x.db")


def test_connectorx_cannot_bind_params() -> None:
    msg = error(url="postgresql://h/db", query="q", engine="connectorx", query_params={"a": 1})
    assert "engine: connectorx cannot bind query_params" in msg


def test_schema_columns_must_be_selected() -> None:
    assert "schema columns ['b'] are not in columns" in error(
        path="x.csv", columns=["a"], schema={"b": "Int64"}
    )


def test_pagination_modes_are_checked() -> None:
    assert "union_tag_invalid" in error(url="https://a/x", pagination={"type": "offset"})
    assert "missing" in error(url="https://a/x", pagination={"type": "cursor", "path": "next"})
    p = parse(url="https://a/x", pagination={"type": "page", "param": "p", "start": 0})
    assert p.pagination is not None
    assert p.pagination.type == "page"


def test_url_password_is_kept_out_of_the_params() -> None:
    p = parse(url="postgresql://app:s3cr3t@db.internal:5432/sales", query="select 1")
    assert p.url == "postgresql://app:***@db.internal:5432/sales"
    assert "s3cr3t" not in canonical_json(p)
    assert "s3cr3t" not in repr(p)
    assert "s3cr3t" not in str(p.model_dump())
    assert p.real_url() == "postgresql://app:s3cr3t@db.internal:5432/sales"


def test_secret_query_values_are_kept_out_of_the_params() -> None:
    p = parse(url="https://api.example.com/rows?api_key=abc123&limit=5")
    assert p.url == "https://api.example.com/rows?api_key=***&limit=5"
    assert "abc123" not in canonical_json(p)
    assert p.real_url().endswith("api_key=abc123&limit=5")


def test_password_in_url_and_password_env_is_ambiguous() -> None:
    assert "either in the url or with password_env" in error(
        url="postgresql://u:pw@h/db", query="q", password_env="PGPASS"
    )


def test_schema_alias() -> None:
    assert parse(path="x.csv", schema={"a": "Int64"}).schema_ == {"a": "Int64"}
