"""Errors that users see.

Every error a user can cause is a :class:`DuctworkError` subclass with an exit code and a
message that says what happened, where, and what to do. The CLI maps them to exit codes
(2 for usage, spec and data-contract errors; 1 for a stage or gate failure); anything else is
an "unexpected error" and prints a traceback only with ``--debug``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


class DuctworkError(Exception):
    """Base class of every error ductwork raises on purpose."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n{hint}")

    def __reduce__(self) -> tuple[Any, ...]:
        # keep the hint and the subclass's fields across processes (pool and Ray workers):
        # the default pickling re-calls __init__ with ``args`` and loses the keywords
        return (_restore_error, (type(self), self.args, self.__dict__))


def _restore_error(
    cls: type[DuctworkError], args: tuple[Any, ...], state: dict[str, Any]
) -> DuctworkError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class UsageError(DuctworkError):
    """A command was called wrongly (unknown stage name, bad option combination)."""


@dataclass(frozen=True)
class Location:
    """A place in a pipeline file, 1-based like editors show it."""

    file: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        if self.line is None:
            return self.file
        if self.column is None:
            return f"{self.file}:{self.line}"
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class SpecIssue:
    location: Location
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class SpecError(DuctworkError):
    """The pipeline file (or a Python-built pipeline) is invalid. Carries every issue found."""

    def __init__(self, issues: Sequence[SpecIssue], *, source: str = "pipeline") -> None:
        self.issues = list(issues)
        n = len(self.issues)
        head = f"{n} error{'s' if n != 1 else ''} in {source}:"
        super().__init__("\n".join([head, *(f"  {i}" for i in self.issues)]))


class DataError(DuctworkError):
    """Input data breaks its contract: malformed file, missing column, wrong type."""


class SourceError(DuctworkError):
    """An external source or sink could not be reached or answered with an error."""

    exit_code = 1


class StageFailed(DuctworkError):
    """A stage raised, or one of its invariants did not hold."""

    exit_code = 1

    def __init__(self, stage: str, message: str, *, hint: str | None = None) -> None:
        self.stage = stage
        super().__init__(f"stage '{stage}' failed: {message}", hint=hint)


class InvariantError(DuctworkError):
    """An invariant of a stage's output was broken. Raised inside a stage; the runner wraps it."""

    exit_code = 1


class GateFailed(DuctworkError):
    """A model did not pass its gate: the pipeline stops before it is registered."""

    exit_code = 1


class StoreError(DuctworkError):
    """The artifact store or the run records are unreadable or inconsistent."""

    exit_code = 1


class MissingExtra(DuctworkError):
    """An optional dependency is needed for this feature."""

    def __init__(self, module: str, extra: str, feature: str) -> None:
        super().__init__(
            f"{feature} requires the '{module}' module, which is not installed.",
            hint=f"Install it with: pip install 'ductwork[{extra}]'",
        )


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' - did you mean X?' when a close match exists, else ''."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" - did you mean '{matches[0]}'?" if matches else ""


def import_optional(module: str, *, extra: str, feature: str) -> object:
    """Import an optional dependency, or raise :class:`MissingExtra` naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(module.split(".")[0], extra, feature) from exc
