"""The config's schemas, read from the constructors they configure (one home per setting): `Class.__init__`'s
parameters, read from the source with `ast` so that nothing is imported (config errors stay fast). Unknown keys are
refused, annotations of plain types checked; the value ranges are the constructor's own (`errors.check`).
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REQUIRED = object()  # a parameter without a default
UNKNOWN = object()  # a default that is not a literal


@dataclass(frozen=True)
class Param:
    name: str
    annotation: str | None
    default: Any


@dataclass(frozen=True)
class Signature:
    cls: str
    params: dict[str, Param]
    open: bool  # takes **kwargs: any key goes


def _module_file(module: str) -> Path | None:
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level package is found, not imported
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for location in spec.submodule_search_locations or ():
        base = Path(location, *rest)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _class_node(module: str, name: str, depth: int = 0) -> ast.ClassDef | None:
    """The class `name` of `module`, following `from x import name` re-exports (torch.optim.Adagrad)."""
    path = _module_file(module)
    if path is None or depth > 4:
        return None
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                    source = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                    return _class_node(source, alias.name, depth + 1)
    return None


@functools.cache
def signature(target: str) -> Signature | None:
    """`target`'s constructor parameters, or None when its source cannot be read (then nothing is checked)."""
    module, _, name = target.rpartition(".")
    try:
        cls = _class_node(module, name) if module else None
    except (OSError, SyntaxError, UnicodeDecodeError, ImportError):  # (ImportError: a relative import beyond its top)
        return None
    init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None) if cls else None
    if init is None:
        return None
    a = init.args
    positional = [*a.posonlyargs, *a.args][1:]  # without self
    defaults = [REQUIRED] * (len(positional) - len(a.defaults)) + list(a.defaults)
    pairs = [*zip(positional, defaults, strict=True),
             *zip(a.kwonlyargs, [d or REQUIRED for d in a.kw_defaults], strict=True)]
    params = {}
    for arg, default in pairs:
        if default is not REQUIRED:
            try:
                default = ast.literal_eval(default)
            except ValueError:
                default = UNKNOWN
        params[arg.arg] = Param(arg.arg, ast.unparse(arg.annotation) if arg.annotation else None, default)
    return Signature(name, params, open=a.kwarg is not None)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# The plain types an annotation may name (a tensor hyperparameter is a number in a config), and their words.
KINDS = {"int": (int, "an integer"), "float": ((int, float), "a number"), "Tensor": ((int, float), "a number"),
         "bool": (bool, "true or false"), "str": (str, "a string"), "None": (type(None), "null")}


def _kinds(annotation: str | None) -> list[str] | None:
    """The plain types an annotation names (`float | None`, `Optional[Union[int, str]]`); None (anything goes) for
    any other annotation."""
    if annotation is None:
        return None
    kinds = re.split(r"\s*[|,]\s*", re.sub(r"\b(Optional|Union)\[|\]", "", annotation).strip())
    kinds += ["None"] if re.search(r"\bOptional\[", annotation) else []
    return kinds if all(k in KINDS for k in kinds) else None


def _fits(kind: str, value: Any) -> bool:
    return isinstance(value, KINDS[kind][0]) and (kind == "bool" or not isinstance(value, bool))  # (a bool is an int)


def problem(sig: Signature, name: str, value: Any) -> str | None:
    """What is wrong with `name=value` for `sig`'s class, or None."""
    if name not in sig.params:
        if sig.open:
            return None
        close = difflib.get_close_matches(name, list(sig.params), n=3)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        return f"no such setting{hint}; {sig.cls} takes {', '.join(sig.params)}"
    kinds = _kinds(sig.params[name].annotation)
    if kinds is None or any(_fits(k, value) for k in kinds):
        return None
    words = [KINDS[k][1] for k in KINDS if k in kinds]  # in KINDS' order: `int | None` says "an integer or null"
    return "must be " + " or ".join(dict.fromkeys(w for w in words if w != "an integer" or "a number" not in words))


def names(target: Any) -> list[str]:
    sig = signature(target) if isinstance(target, str) else None
    return list(sig.params) if sig else []
