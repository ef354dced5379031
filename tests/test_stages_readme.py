"""stages/README.md lists every stage the registry knows (STAGES, plus the builders of builtin models),
one table row each, naming its module, what it reads and writes and the paper or method it serves."""

from pathlib import Path

import pytest

from selfimprove.core.registry import BUILTIN_MODELS, STAGES, module_of, resolve

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "stages/README.md"
COLUMNS = ["stage", "module", "reads", "writes", "serves (paper / method)"]


def rows() -> dict[str, dict[str, str]]:
    """The README's stage table: {stage: {column: cell}}."""
    lines = [line for line in README.read_text().splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    table = {}
    for line in lines[2:]:  # after the header and its |---| separator
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
        table[cells["stage"]] = cells
    return table


def builders() -> set[str]:
    """The stages that build builtin models (bootstrap, convert): the stage modules BUILTIN_MODELS points
    to (a builtin task's own models are built by code in selfimprove.tasks, not by a stage)."""
    modules = {module_of("builtin model", name) for name in BUILTIN_MODELS}
    return {m.rsplit(".", 1)[-1] for m in modules if m.startswith("selfimprove.stages.")}


def test_the_readme_lists_every_registered_stage_once_and_nothing_else():
    assert builders() >= {"bootstrap", "convert"}
    listed = rows()
    lines = [line for line in README.read_text().splitlines() if line.startswith("| ") and "`stages/" in line]
    assert len(lines) == len(listed)  # no stage listed twice
    missing = (set(STAGES) | builders()) - set(listed)
    assert not missing, f"stages/README.md has no row for: {', '.join(sorted(missing))}"
    assert set(listed) - set(STAGES) - builders() == set()  # no row for a stage that is not registered


def test_each_row_names_the_stage_s_module_and_fills_every_column():
    for name, cells in rows().items():
        module = module_of("stage", name) if name in STAGES else f"selfimprove.stages.{name}"
        path = f"stages/{module.rsplit('.', 1)[-1]}.py"
        assert cells["module"] == f"`{path}`", name
        assert (ROOT / "selfimprove" / path).is_file(), name
        assert all(cells.get(column) for column in COLUMNS), (name, cells)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_each_row_names_every_file_the_stage_declares_it_writes(name):
    written = rows()[name]["writes"]
    declared = resolve("stage", name).writes
    assert all(f"{Path(value).stem}" in written for value in declared.values()), (declared, written)
