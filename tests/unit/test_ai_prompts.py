from __future__ import annotations

import pytest

from ductwork.ai.prompts import PromptError, PromptTemplate, compile_check
from ductwork.errors import DataError


def test_renders_a_row() -> None:
    t = PromptTemplate("Function {{ name }}:\n{% for t in tags %}- {{ t }}\n{% endfor %}")
    assert t.render({"name": "f", "tags": ["a", "b"]}) == "Function f:\n- a\n- b\n"
    assert t.variables == ["name", "tags"]


def test_variables_set_in_the_template_are_not_inputs() -> None:
    t = PromptTemplate(
        "{% set x = name | upper %}{{ x }} {% for h in context %}{{ h.id }}{% endfor %}"
    )
    assert t.variables == ["context", "name"]


def test_a_syntax_error_names_the_template_and_line() -> None:
    with pytest.raises(PromptError) as info:
        PromptTemplate(
            "line one\nFunction {{ name }\n", name="prompts/label.j2", where="stage 'e': "
        )
    err = info.value
    assert isinstance(err, DataError)
    assert err.message.startswith("stage 'e': the prompts/label.j2 template, line 2:")
    assert err.hint == "2 | Function {{ name }"
    assert compile_check("{% if x %}", "system") is not None
    assert "the system template, line 1" in (compile_check("{% if x %}", "system") or "")
    assert compile_check("{{ fine }}") is None


def test_an_unknown_variable_is_caught_before_rendering() -> None:
    t = PromptTemplate("Hello\n\n{{ nme }} and {{ doc }}", where="stage 'enrich': ")
    with pytest.raises(PromptError) as info:
        t.check_variables(["name", "doc"], what="input 'docs'")
    err = info.value
    assert err.message == (
        "stage 'enrich': the prompt template, line 3, uses 'nme', which is not a column of "
        "input 'docs' - did you mean 'name'?"
    )
    assert err.hint == "Available: name, doc"
    t.check_variables(["nme", "doc", "other"])  # all there: no error


def test_an_undefined_value_while_rendering_names_the_row_and_line() -> None:
    t = PromptTemplate("Title: {{ title }}\nBy {{ meta.author }}", name="p.j2")
    with pytest.raises(PromptError) as info:
        t.render({"title": "x", "meta": {"year": 2020}}, row="row-17")
    msg = info.value.message
    assert "the p.j2 template, line 2, for row 'row-17'" in msg
    assert "has no attribute 'author'" in msg
    assert info.value.hint == "Available: meta, title"


def test_the_sandbox_refuses_unsafe_access() -> None:
    t = PromptTemplate("{{ name.__class__.__mro__ }}")
    with pytest.raises(PromptError, match="for row 0"):
        t.render({"name": "x"}, row=0)
