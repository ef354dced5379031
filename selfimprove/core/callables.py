"""Checking a `module:function` reference at `validate` time without running the user's code: the module
is found on the import path (the project directory first, as a stage's `python -m` sees it) and its
source parsed, so a missing module, a syntax error or a missing function is one line before anything
runs, and the module's top-level code runs once, in the stage, not in validate too.

A name the parse cannot see (made by `globals()`, a star import, a module `__getattr__`, a compiled
module) is taken as present: the stage's import is the final word, and its error is one line too.
"""

from __future__ import annotations

import ast
import importlib.machinery
import os
import sys
from pathlib import Path

from selfimprove.core.errors import UserError


def check(value: str, reads=None, where: str = "") -> None:
    """Raise UserError when `module:function` names no module, or a module without that name."""
    module, colon, name = value.partition(":")
    if not colon or not module or module == "selfimprove" or module.startswith("selfimprove."):
        return None  # a rule name (checked by its stage), or the package's own code
    source = module_source(module)
    if source is None:
        raise UserError(f"{value}: no module {module!r} in the project directory or the installed packages; put "
                        f"{module.replace('.', '/')}.py in the project or pip install the package that has it")
    if source.suffix != ".py":
        return None  # compiled: nothing to parse
    try:
        tree = ast.parse(source.read_bytes(), filename=str(source))
    except SyntaxError as error:
        raise UserError(f"{source}:{error.lineno}: {error.msg}; {value} cannot be imported until it is fixed") from None
    names, opaque = top_level_names(tree)
    if name not in names and not opaque:
        raise UserError(f"{value}: {source} defines no {name!r}; define def {name}(...) there, or fix the name "
                        f"after the colon")
    return None


def module_source(module: str) -> Path | None:
    """The file a module would be imported from, found without importing it or its parent packages."""
    search = [os.getcwd(), *sys.path]
    spec = None
    for part in module.split("."):
        spec = importlib.machinery.PathFinder.find_spec(part, search)
        if spec is None:
            return None
        search = list(spec.submodule_search_locations or [])
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return Path(spec.origin) if spec and spec.origin else None
    return Path(spec.origin)


def top_level_names(tree: ast.Module) -> tuple[set[str], bool]:
    """(the names a module binds at its top level, in any branch of an if or try, whether it may bind
    others the parse cannot see)."""
    names: set[str] = set()
    opaque = _bind(tree.body, names)
    return names, opaque


def _bind(body: list[ast.stmt], names: set[str]) -> bool:
    opaque = False
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            opaque |= node.name == "__getattr__"
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            opaque |= any(alias.name == "*" for alias in node.names)
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            for branch in ("body", "orelse", "finalbody"):
                opaque |= _bind(getattr(node, branch, []), names)
            for handler in getattr(node, "handlers", []):
                opaque |= _bind(handler.body, names)
        elif isinstance(node, ast.Expr) and "globals()" in ast.unparse(node):
            opaque = True  # globals()[...] = ...: a name the parse cannot read
    return opaque
