"""The package's folders are its layers, and imports only point down: no upward import between layers,
no circle between modules (lazy imports inside functions included), and no stage module importing
another stage module (a stage's code fingerprint is the code it imports, so such an import would make
editing one stage re-run the other)."""

import ast
from pathlib import Path

import selfimprove
from selfimprove.core import registry

PACKAGE = Path(selfimprove.__file__).resolve().parent
# Bottom to top: a module may import from its own layer and the layers before it.
LAYERS = ["core", "tasks", "models", "backends", "scoring", "stages", "loop", "results", "pipeline", "cli"]
PACKAGE_DATA = {"shipped", "py.typed", "__init__"}  # shipped: prompts, and links to loops/ and examples/


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Package modules the file imports, anywhere in it; `from selfimprove.x import y` is x.y when y is a
    module."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "selfimprove":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                imported.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names if alias.name.split(".")[0] == "selfimprove"}
    return imported


def _layer(module: str) -> str:
    parts = module.split(".")
    return "core" if len(parts) == 1 else parts[1]  # selfimprove/__init__.py (the version) is the bottom


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {module: _imports(path, set(modules)) - {module} for module, path in modules.items()}


def test_the_package_root_holds_its_layers_and_nothing_else():
    entries = {p.name.removesuffix(".py") for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert entries - PACKAGE_DATA <= set(LAYERS), f"not a layer: {sorted(entries - PACKAGE_DATA - set(LAYERS))}"
    assert len(entries) <= 12


def test_imports_point_down():
    upward = [f"{a} -> {b}" for a, targets in _graph().items() for b in targets
              if LAYERS.index(_layer(b)) > LAYERS.index(_layer(a))]
    assert not upward, "upward imports: " + "; ".join(sorted(upward))


def test_no_import_circle():
    graph, state, circles = _graph(), {}, []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles: " + "; ".join(circles)


def test_no_stage_module_imports_another():
    stage_modules = {registry.module_of("stage", name) for name in registry.STAGES}
    stage_modules |= {registry.module_of("builtin model", name) for name in registry.BUILTIN_MODELS
                      if registry.module_of("builtin model", name).startswith("selfimprove.stages.")}
    graph = _graph()
    crossing = [f"{a} -> {b}" for a in stage_modules for b in graph[a] if b in stage_modules]
    assert not crossing, "stages importing stages: " + "; ".join(sorted(crossing))


def test_the_check_sees_lazy_imports():
    """The walk must see an import inside a function: the stages import lazily."""
    modules = _modules()
    lazy = _imports(modules["selfimprove.backends.hf"], set(modules))
    assert "selfimprove.backends.sampling" in lazy
