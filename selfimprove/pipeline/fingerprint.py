"""Code identity: a fingerprint of the code that determines a stage's outputs, recorded as a param.

A stage node depends on `code.<unit>` params (in params.yaml, section `code`) rather than on the paths
of the package's files: dvc.yaml then names no path of the machine, and a project compiled in one venv
reruns nothing in another venv, at another path, with the same code. A unit is a module of the package
and every package module it imports (the import walk, lazy imports inside functions included), or a
prompt file of the package.

What counts is a module's tokens, minus:
- comments, docstrings, blank lines and line breaks inside brackets, and trailing commas (formatting);
- declarations (selfimprove.core.stage): the SETTINGS table, the STAGE and Builtin objects, and functions
  marked @declaration (DVC nodes, checks). Their effects reach DVC as the node itself and as the params
  the settings resolve to, so a setting added to one stage re-runs only that stage (its params change);
- modules that only declare or name things (selfimprove.core.stage, selfimprove.core.registry,
  selfimprove.core.validation): registry entries are resolved to their modules, which count one by one;
- selfimprove.core.errors, which only turns failures into messages: a stage that fails leaves nothing that
  DVC records, so how it words the failure cannot change a cached output;
- selfimprove.core.warm_link, a stage's line to the run's warm engine (asking it to free memory): where a
  stage's requests go is an execution detail, like a batch size, and changes no output.
"""

from __future__ import annotations

import ast
import hashlib
import io
import tokenize
from functools import lru_cache
from pathlib import Path

PACKAGE = "selfimprove"
DECLARATION_MODULES = {"selfimprove", "selfimprove.core", "selfimprove.core.stage", "selfimprove.core.registry", "selfimprove.core.validation",
                       "selfimprove.core.errors", "selfimprove.core.warm_link"}
DECLARATION_NAMES = {"SETTINGS", "STAGE"}
DECLARATION_CALLS = {"Stage", "Builtin"}
KEPT_TOKENS = {tokenize.NAME: "N", tokenize.NUMBER: "#", tokenize.STRING: "S", tokenize.OP: "O",
               tokenize.NEWLINE: ";", tokenize.INDENT: ">", tokenize.DEDENT: "<"}


def package_root() -> Path:
    """The directory holding the package (its parent, so selfimprove/x.py is root / "selfimprove/x.py")."""
    import selfimprove

    return Path(selfimprove.__file__).resolve().parent.parent


def module_file(module: str) -> Path:
    """selfimprove/x.py for a module, selfimprove/x/__init__.py for a package."""
    root = package_root()
    path = root / f"{module.replace('.', '/')}.py"
    return path if path.exists() else root / module.replace(".", "/") / "__init__.py"


def unit_key(unit: str) -> str:
    """The params key of a unit: selfimprove.stages.generate -> stages-generate,
    selfimprove/shipped/prompts/additive.txt -> prompts-additive-txt (DVC splits keys on dots). Defined in
    selfimprove.core.stage: a builtin's cache (selfimprove.models.builtin_cache) reads the recorded ones."""
    from selfimprove.core.stage import unit_key as key

    return key(unit)


def unit_fingerprint(unit: str) -> str:
    """The fingerprint of a unit: a module name (with everything it imports) or a package file path."""
    if "/" in unit:
        return hashlib.sha256((package_root() / unit).read_bytes()).hexdigest()[:16]
    parts = [f"{module}:{module_fingerprint(module)}" for module in sorted(imported_modules(unit))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def package_file(path: Path) -> str | None:
    """selfimprove/... for a file inside the package (a builtin prompt), else None (a user's file, also
    one beside the package, as in a project inside this repository with an editable install)."""
    try:
        return str(Path(PACKAGE) / path.resolve().relative_to(package_root() / PACKAGE))
    except ValueError:
        return None


@lru_cache(maxsize=None)
def _parsed(module: str) -> tuple[str, ast.Module]:
    source = module_file(module).read_text()
    return source, ast.parse(source)


def imported_modules(root: str) -> set[str]:
    """The package modules reachable from root through `import selfimprove...` / `from selfimprove...
    import`, including imports inside functions (the stages import lazily), but not those inside
    declarations, and not the modules that only declare."""
    seen, todo = set(), [root]
    while todo:
        module = todo.pop()
        if module in seen or module in DECLARATION_MODULES or not module_file(module).exists():
            continue
        seen.add(module)
        _, tree = _parsed(module)
        skipped = _declaration_lines(tree)
        for node in ast.walk(tree):
            if getattr(node, "lineno", 0) in skipped:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
                todo.append(node.module)
                todo.extend(f"{node.module}.{alias.name}" for alias in node.names)  # `from selfimprove import data`
            elif isinstance(node, ast.Import):
                todo.extend(alias.name for alias in node.names if alias.name.startswith(PACKAGE))
    return seen


@lru_cache(maxsize=None)
def module_fingerprint(module: str) -> str:
    source, tree = _parsed(module)
    skipped = _declaration_lines(tree) | _docstring_lines(tree)
    return hashlib.sha256("\x00".join(_tokens(source, skipped)).encode()).hexdigest()[:16]


def _tokens(source: str, skipped: set[int]) -> list[str]:
    """The module's significant tokens outside the skipped lines, an f-string as one token (Python 3.12
    splits f-strings into parts; 3.11 does not: the fingerprint must not depend on the version)."""
    lines = source.splitlines(keepends=True)
    kept, depth, start = [], 0, None
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    for index, token in enumerate(tokens):
        name = tokenize.tok_name[token.type]
        if name == "FSTRING_START":
            depth, start = depth + 1, start if depth else token.start
            continue
        if depth:
            if name == "FSTRING_END":
                depth -= 1
                if not depth:
                    kept.append("S" + _slice(lines, start, token.end)) if start[0] not in skipped else None
            continue
        if token.type not in KEPT_TOKENS or token.start[0] in skipped:
            continue
        if token.string == "," and _next_significant(tokens, index) in (")", "]", "}"):
            continue  # a trailing comma is formatting
        kept.append(KEPT_TOKENS[token.type] + (token.string if token.type not in (tokenize.INDENT, tokenize.DEDENT) else ""))
    return kept


def _slice(lines: list[str], start: tuple[int, int], end: tuple[int, int]) -> str:
    (row0, col0), (row1, col1) = start, end
    if row0 == row1:
        return lines[row0 - 1][col0:col1]
    return lines[row0 - 1][col0:] + "".join(lines[row0:row1 - 1]) + lines[row1 - 1][:col1]


def _next_significant(tokens: list, index: int) -> str:
    for token in tokens[index + 1:]:
        if token.type not in (tokenize.NL, tokenize.COMMENT, tokenize.NEWLINE):
            return token.string
    return ""


def _docstring_lines(tree: ast.Module) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                lines |= set(range(first.lineno, first.end_lineno + 1))
    return lines


def _declaration_lines(tree: ast.Module) -> set[int]:
    """Lines of the module's top-level declarations."""
    lines = set()
    for node in tree.body:
        if _is_declaration(node):
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            lines |= set(range(first, node.end_lineno + 1))
    return lines


def _is_declaration(node: ast.stmt) -> bool:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return any(isinstance(d, ast.Name) and d.id == "declaration" for d in node.decorator_list)
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        named = all(isinstance(t, ast.Name) and t.id in DECLARATION_NAMES for t in targets)
        call = isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name) \
            and node.value.func.id in DECLARATION_CALLS
        return named or call
    return False
