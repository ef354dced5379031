"""The documentation: the generated reference pages match the code, every shipped loop has a page that
includes its loop file, the README keeps its shape, and the site builds offline with warnings as errors."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", ["stages.md", "loop-file.md", "cli.md"])
def test_generated_reference_is_current(page):
    generator = _generator()
    written = (ROOT / "docs" / "reference" / page).read_text()
    assert written == generator.PAGES[page](), (
        f"docs/reference/{page} is stale: run `python docs/gen_reference.py` and commit it")


def test_reference_covers_every_stage_and_command():
    from selfimprove.cli import main
    from selfimprove.core.registry import stages

    generator = _generator()
    text = generator.stages_page()
    for stage in stages():
        assert f"\n## {stage.name}\n" in text
        for key in stage.settings:
            assert f"| `{key}` |" in text
    cli = generator.cli_page()
    for name in main.commands:
        assert f"\n## {name}\n" in cli


def test_check_flag_reports_stale_pages(tmp_path, monkeypatch, capsys):
    generator = _generator()
    assert generator.main(["--check"]) == 0
    monkeypatch.setattr(generator, "REFERENCE", tmp_path)
    assert generator.main(["--check"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("stale generated docs:")


def test_every_shipped_loop_has_a_page_that_includes_it():
    loops = sorted(path.stem for path in (ROOT / "loops").glob("*.yaml"))
    assert len(loops) == 15
    for name in loops:
        page = ROOT / "docs" / "loops" / f"{name}.md"
        assert page.is_file(), f"no docs page for loops/{name}.yaml"
        assert f'--8<-- "loops/{name}.yaml"' in page.read_text(), f"{page} does not include loops/{name}.yaml"
        header = [line for line in (ROOT / "loops" / f"{name}.yaml").read_text().splitlines() if line.startswith("#")]
        assert f"# Docs:      docs/loops/{name}.md" in header


def test_readme_is_short_and_starts_with_the_newcomer_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 220
    first_block = lines[lines.index("```bash") + 1:]
    first_block = first_block[:first_block.index("```")]
    assert first_block[0].startswith("# 1. set up and run the default ScPO loop")
    assert first_block[1].endswith(".venv/bin/selfimprove run loops/scpo.yaml")
    assert first_block[3].startswith("# 2. set up and run the tests")
    assert "pip install -e '.[test,lora,docs]'" in first_block[4]
    assert lines.index("```bash") < 10


def test_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or "mkdocs"
    result = subprocess.run([mkdocs, "build", "--strict", "-q", "-d", str(tmp_path / "site")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "loops" / "scpo" / "index.html").is_file()
    html = (tmp_path / "site" / "loops" / "scpo" / "index.html").read_text()
    assert "most_vs_least_voted" in html  # the loop file was included by the snippet
    assert "fonts.googleapis.com" not in html
