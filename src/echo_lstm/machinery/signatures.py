"""The config's schemas, read from the constructors they configure: one home per setting.

A config node with `_target_: pkg.module.Class` is checked against `Class.__init__`'s parameters, read from the
source with `ast`, so nothing is imported (no torch, no Lightning: config errors stay fast). Unknown keys are
refused with the closest names, annotations of plain types (`int`, `float | None`, `Optional[bool]`, ...) are
checked, other annotations accept anything; the value *ranges* are the constructor's own (`errors.check`). A new
constructor argument with a default is a new setting: add its default to the YAML, nothing else.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
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
                    for _ in range(max(node.level - 1, 0)):
                        package = package.rpartition(".")[0]
                    source = node.module or ""
                    if node.level:
                        source = f"{package}.{source}".strip(".")
                    return _class_node(source, alias.name, depth + 1)
    return None


@functools.cache
def signature(target: str) -> Signature | None:
    """`target`'s constructor parameters, or None when its source cannot be read (then nothing is checked)."""
    module, _, name = target.rpartition(".")
    try:
        cls = _class_node(module, name) if module else None
    except (OSError, SyntaxError, UnicodeDecodeError):
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


def _kinds(annotation: str | None) -> set[str] | None:
    """{"int", "None", ...} for an annotation of plain types; None (anything goes) for any other."""
    if annotation is None:
        return None
    try:
        tree = ast.parse(annotation, mode="eval").body
    except SyntaxError:
        return None

    def walk(node: ast.AST) -> set[str] | None:
        if isinstance(node, ast.Name) and node.id in ("int", "float", "bool", "str", "Tensor"):
            return {"float" if node.id == "Tensor" else node.id}  # (a tensor hyperparameter: a number in a config)
        if isinstance(node, ast.Constant) and node.value is None:
            return {"None"}
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            left, right = walk(node.left), walk(node.right)
            return None if left is None or right is None else left | right
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
            inner = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            parts = [walk(n) for n in inner]
            if None in parts or node.value.id not in ("Optional", "Union"):
                return None
            return set().union(*parts) | ({"None"} if node.value.id == "Optional" else set())
        return None

    return walk(tree)


KIND_TEXT = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string", "None": "null"}


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fits(kind: str, value: Any) -> bool:
    if kind == "None":
        return value is None
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return is_int(value)
    if kind == "float":
        return is_number(value)
    return isinstance(value, str)


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
    order = [k for k in ("int", "float", "bool", "str", "None") if k in kinds]
    if "float" in order and "int" in order:
        order.remove("int")
    return "must be " + " or ".join(KIND_TEXT[k] for k in order)


def names(target: Any) -> list[str]:
    sig = signature(target) if isinstance(target, str) else None
    return list(sig.params) if sig else []
