from __future__ import annotations

import math
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr

from ductwork.core.fingerprint import (
    canonical_json,
    diff_components,
    file_digest,
    source_digest,
    stage_fingerprint,
)


class Params(BaseModel):
    path: str
    password: SecretStr
    n: int = 1


def fp(**overrides: object) -> str:
    base: dict[str, object] = {
        "kind": "extract",
        "kind_version": "1",
        "params": {"a": 1},
        "inputs": {"x": "abc"},
        "source": "",
        "code": "",
    }
    base.update(overrides)
    return stage_fingerprint(**base).digest  # type: ignore[arg-type]


def test_canonical_json_is_order_independent() -> None:
    assert canonical_json({"b": 1, "a": [1, 2]}) == canonical_json({"a": [1, 2], "b": 1})


def test_secrets_never_reach_the_fingerprint() -> None:
    a = Params(path="x", password=SecretStr("hunter2"))
    b = Params(path="x", password=SecretStr("other"))
    assert "hunter2" not in canonical_json(a)
    assert canonical_json(a) == canonical_json(b)


def test_nan_and_inf_are_fingerprintable() -> None:
    assert canonical_json({"x": math.nan}) != canonical_json({"x": math.inf})


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "transform"},
        {"kind_version": "2"},
        {"params": {"a": 2}},
        {"inputs": {"x": "abd"}},
        {"source": "s1"},
        {"code": "c1"},
    ],
)
def test_every_component_changes_the_digest(change: dict[str, object]) -> None:
    assert fp(**change) != fp()


def test_same_components_same_digest() -> None:
    assert fp() == fp()


def test_diff_components_names_what_changed() -> None:
    old = stage_fingerprint(
        kind="t",
        kind_version="1",
        params={"sql": "a", "k": 1},
        inputs={"f": "1"},
        source="",
        code="",
    )
    new = stage_fingerprint(
        kind="t",
        kind_version="1",
        params={"sql": "b", "k": 1},
        inputs={"f": "2", "g": "3"},
        source="",
        code="x",
    )
    reasons = diff_components(old.components, new.components)
    assert reasons == [
        "param 'sql' changed",
        "input 'f' changed",
        "input 'g' added",
        "code changed",
    ]


def test_file_digest_follows_content(tmp_path: Path) -> None:
    p = tmp_path / "f.csv"
    p.write_text("a\n1\n")
    d1 = file_digest(p)
    p.write_text("a\n2\n")
    assert file_digest(p) != d1


def test_source_digest_changes_with_the_function_source() -> None:
    ns1: dict[str, object] = {}
    ns2: dict[str, object] = {}
    exec("def f():\n    return 1\n", ns1)
    exec("def f():\n    return 1\n", ns2)
    assert source_digest(ns1["f"]) == source_digest(ns2["f"])
    assert source_digest(test_same_components_same_digest) != source_digest(
        test_file_digest_follows_content
    )
