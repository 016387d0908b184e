"""Prompt templates: jinja2, sandboxed, strict about unknown variables.

A generate stage renders one prompt per row with the row's fields as variables. Two kinds of
mistake are common and both must stop the stage before money is spent:

* a syntax error in the template: :class:`PromptTemplate` compiles at construction and the
  error names the template (``prompt`` or the ``prompt_file`` path) and the line;
* a variable that is not a column (a typo, a column dropped upstream):
  :meth:`PromptTemplate.check_variables` compares the template's variables with the columns
  before the first request and names the variable, its line and the available columns. An
  undefined value met while rendering (``{{ meta.author }}`` where ``meta`` has no
  ``author``) fails the same way and also names the row key (``StrictUndefined``).

The environment is jinja2's ``SandboxedEnvironment``: templates may come from a repository
one does not fully trust, and a template has no business calling methods that mutate data or
reach the interpreter.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment

from ductwork.errors import DataError, did_you_mean


class PromptError(DataError):
    """A template that does not compile or does not fit the rows."""


def _environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )


class PromptTemplate:
    """A compiled template, named for errors (``prompt``, ``system``, ``prompts/label.j2``)."""

    def __init__(self, source: str, *, name: str = "prompt", where: str = "") -> None:
        self.source = source
        self.name = name
        self.where = where  # "stage 'enrich': " or ""
        env = _environment()
        try:
            self._ast = env.parse(source, name=name)
            # compiled with the name as its file name: runtime errors then carry template lines
            code = env.compile(self._ast, name, name)
        except jinja2.TemplateSyntaxError as exc:
            msg = f"{where}the {name} template, line {exc.lineno}: {exc.message}"
            raise PromptError(msg, hint=_line_hint(source, exc.lineno)) from None
        self._template = env.template_class.from_code(env, code, env.make_globals(None))
        self._lines = _variable_lines(self._ast)

    @property
    def variables(self) -> list[str]:
        """The variables the template reads from outside (not set by it), sorted."""
        from jinja2 import meta

        return sorted(meta.find_undeclared_variables(self._ast))

    def check_variables(self, available: Iterable[str], *, what: str = "the input") -> None:
        """Fail, before any row is rendered, when the template reads an unknown variable."""
        names = list(available)
        known = set(names)
        for var in self.variables:
            if var not in known:
                line = self._lines.get(var)
                at = f", line {line}," if line else ""
                msg = (
                    f"{self.where}the {self.name} template{at} uses '{var}', which is not a "
                    f"column of {what}{did_you_mean(var, names)}"
                )
                raise PromptError(msg, hint=f"Available: {', '.join(names) or 'none'}")

    def render(self, variables: Mapping[str, Any], *, row: object = None) -> str:
        """The text for one row; an undefined value names the row and the line."""
        try:
            return self._template.render(variables)
        except jinja2.UndefinedError as exc:
            msg = f"{self._place(exc, row)}: {exc.message}"
            hint = f"Available: {', '.join(sorted(variables)) or 'none'}"
            raise PromptError(msg, hint=hint) from None
        except jinja2.TemplateError as exc:  # a filter or a sandbox refusal
            msg = f"{self._place(exc, row)}: {exc}"
            raise PromptError(msg) from None

    def _place(self, exc: BaseException, row: object) -> str:
        parts = [f"{self.where}the {self.name} template"]
        line = _template_line(exc, self.name)
        if line:
            parts.append(f"line {line}")
        if row is not None:
            parts.append(f"for row {row!r}")
        return ", ".join(parts)


def compile_check(source: str, name: str = "prompt") -> str | None:
    """The syntax error of a template as one line (for params validation), or None."""
    try:
        _environment().parse(source, name=name)
    except jinja2.TemplateSyntaxError as exc:
        return f"the {name} template, line {exc.lineno}: {exc.message}"
    return None


def _variable_lines(ast: nodes.Template) -> dict[str, int]:
    """The first line each loaded name appears on."""
    lines: dict[str, int] = {}
    for node in ast.find_all(nodes.Name):
        if node.ctx == "load" and node.name not in lines:
            lines[node.name] = node.lineno
    return lines


def _template_line(exc: BaseException, name: str) -> int | None:
    """The template line of a runtime error: jinja2 rewrites tracebacks to template frames."""
    line = None
    tb = exc.__traceback__ or sys.exc_info()[2]
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == name:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _line_hint(source: str, lineno: int | None) -> str | None:
    if not lineno:
        return None
    lines = source.splitlines()
    if 1 <= lineno <= len(lines):
        return f"{lineno} | {lines[lineno - 1]}"
    return None
