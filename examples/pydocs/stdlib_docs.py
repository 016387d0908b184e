"""The example's data: the public functions and classes of 34 standard-library modules.

Real text that ships with every Python: for each module the pipeline names, every public function and
class that has a docstring becomes one row — its qualified name, signature and the first
paragraph of its docstring — with ``category``, the TRUE label of what the module is for.
The pipeline never shows the model the module or the category: the model labels each
function from its name and doc alone, and the evals compare its labels with ``category``.

Docstrings differ a little between Python versions (3.11 and 3.13 have a few more or fewer
functions), so counts are not fixed; within one Python the table is identical on every run
(sorted, no memory addresses).

    python examples/pydocs/stdlib_docs.py    # prints the counts per category and module
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import polars as pl

HERE = Path(__file__).resolve().parent
SCHEMA = {
    "qualname": pl.String,
    "module": pl.String,
    "name": pl.String,
    "kind": pl.String,
    "signature": pl.String,
    "doc": pl.String,
    "category": pl.String,
}

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_MAX_DOC = 600
_SIGNATURE_LINE = re.compile(r"^[\w.]+\(.*\)( *-+> *[\w .,\[\]()]*)?$")
# os alone has ~190 documented functions: at most this many rows a module keeps the classes
# balanced (chosen by a hash of the name, so the choice does not depend on the alphabet)
MAX_PER_MODULE = 30


def first_paragraph(doc: str) -> str:
    """The docstring's first paragraph on one line (where most modules say what a thing does).

    C functions often open with a signature line (``getsizeof(object [, default]) -> int``):
    then the next paragraph is taken too, since the signature alone says little.
    """
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", doc.strip())]
    paras = [p for p in paras if p]
    text = paras[0] if paras else ""
    i = 1
    while _SIGNATURE_LINE.match(text) and i < len(paras):
        text = f"{text} {paras[i]}"
        i += 1
    return text if len(text) <= _MAX_DOC else text[: _MAX_DOC - 1] + "…"


def signature(obj: Any) -> str:
    try:
        sig = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""
    return _ADDRESS.sub("", sig)


def _public_names(module: Any) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    return sorted(n for n in set(names) if not n.startswith("_"))


def _belongs(obj: Any, module_name: str) -> bool:
    """Defined in the module (or its private helpers), not imported from elsewhere."""
    owner = getattr(obj, "__module__", None) or ""
    top = module_name.split(".")[0]
    return (
        owner == module_name
        or owner.startswith(module_name + ".")
        or owner.lstrip("_") == top  # _socket, _csv, _sqlite3, _datetime, _decimal ...
        or owner.lstrip("_").startswith(top)  # _pydecimal, _collections_abc is filtered below
        or (top == "os" and owner in ("posix", "nt"))
        or (top == "sys" and owner == "sys")
    )


def rows_of(module_name: str, category: str, per_module: int) -> list[dict[str, str]]:
    module = importlib.import_module(module_name)
    out = []
    for name in _public_names(module):
        obj = getattr(module, name, None)
        if obj is None:
            continue
        if inspect.isclass(obj):
            if issubclass(obj, BaseException) or getattr(obj, "__module__", "") == "typing":
                continue
            kind = "class"
        elif inspect.isroutine(obj):
            kind = "function"
        else:
            continue
        if not _belongs(obj, module_name) or getattr(obj, "__module__", "") == "_collections_abc":
            continue
        # obj.__doc__, not inspect.getdoc: a class without its own docstring would get its base
        # class's (ThreadPoolExecutor would say "an abstract base class for ... executors")
        doc = obj.__doc__ if isinstance(obj.__doc__, str) else None
        if not doc or not doc.strip():
            continue
        out.append(
            {
                "qualname": f"{module_name}.{name}",
                "module": module_name,
                "name": name,
                "kind": kind,
                "signature": signature(obj),
                "doc": first_paragraph(inspect.cleandoc(doc)),
                "category": category,
            }
        )
    ranked = sorted(out, key=lambda r: hashlib.sha256(r["qualname"].encode()).hexdigest())
    return ranked[:per_module]


def docstrings(modules: dict[str, str], per_module: int = MAX_PER_MODULE) -> pl.DataFrame:
    """Every documented public function and class of ``modules``, sorted by qualname.

    ``modules`` maps a module to its true category. The pipeline passes it (and
    ``per_module``) as the python stage's ``args``: the labels are then in the pipeline file
    for everyone to read, and part of the stage's fingerprint.
    """
    rows = [r for m, category in modules.items() for r in rows_of(m, category, per_module)]
    return pl.DataFrame(rows, schema=SCHEMA).unique("qualname", keep="first").sort("qualname")


def pipeline_args(pipeline: Path = HERE / "pipeline.yaml") -> dict[str, Any]:
    """The ``args`` the pipeline gives the docstrings stage (for scripts and evals)."""
    from ductwork import api

    params = api.load(pipeline).stages["docstrings"].params.model_dump()
    args: dict[str, Any] = params["args"]
    return args


if __name__ == "__main__":
    df = docstrings(**pipeline_args())
    print(df.group_by("category").len().sort("category"))
    print(df.group_by("module").len().sort("len", descending=True).head(40))
    print(df.height, "rows")
