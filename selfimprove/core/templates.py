"""One registry of prompt templates: a name -> a prompt file of the package, or a template written in
code (the tiny models' prompts, which their bootstraps are trained on, live beside their task). Wherever a
setting takes a template, a user's text file is accepted instead of a name.

    text = templates.load("additive", required=("question", "response"))
    text = templates.load("my_judge.txt", required=("question", "response"))

A template's placeholders are `{name}`; `{{` and `}}` are literal braces. A template is refused, in one
line naming the file, when it lacks a placeholder its stage fills or has one the stage never fills.

This module only names things: it is not part of any stage's code fingerprint. What a template says is
covered by the file it resolves to (`path`): a package prompt counts as code of the stages that read it,
a user's file is a DVC dependency, and a template written in code resolves to its module's file.
"""

from __future__ import annotations

import difflib
import importlib
import re
from pathlib import Path

from selfimprove.core.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent.parent
PROMPTS_DIR = PACKAGE_DIR / "shipped" / "prompts"
PLACEHOLDER_RE = re.compile(r"(?<!\{)\{(\w+)\}(?!\})")

# name -> a file under selfimprove/shipped/prompts/, or "module:ATTRIBUTE" for a template written in code
TEMPLATES = {
    # judges (judge.template, evaluate.win_template, metajudge.template)
    "additive": "judge_additive.txt",
    "pairwise": "judge_pairwise.txt",
    "meta": "meta_judge.txt",
    "tiny-arith": "selfimprove.tasks.tinyarith:JUDGE_TEMPLATE",
    "tiny-arith-meta": "selfimprove.tasks.tinyarith:META_TEMPLATE",
    # TPO's thought prompts (data.prompt_template)
    "thought-generic": "thought_generic.txt",
    "thought-specific": "thought_specific.txt",
    # Self-Taught Evaluator (perturb.template, pairjudge.template, judge_eval.template)
    "eval-plan": "judge_eval_plan.txt",
    "worse-response": "worse_response.txt",
    "tiny-arith-pairwise": "selfimprove.tasks.arith_evaluator:PAIRWISE_TEMPLATE",
    "tiny-arith-perturb": "selfimprove.tasks.arith_evaluator:PERTURB_TEMPLATE",
    # System 2 prompting pipelines (system2.step1_template, step2_template)
    "cot": "system2/cot.txt",
    "rar-rephrase": "system2/rar_rephrase.txt",
    "rar-respond": "system2/rar_respond.txt",
    "s2a-rewrite": "system2/s2a_rewrite.txt",
    "s2a-answer": "system2/s2a_answer.txt",
    # Branch-Solve-Merge (bsm.*_template)
    "bsm-branch": "system2/bsm_branch.txt",
    "bsm-solve": "system2/bsm_solve.txt",
    "bsm-merge": "system2/bsm_merge.txt",
    "bsm-system1": "system2/bsm_system1.txt",
    # DivPO's diversity judge (diversity.template)
    "diversity": "diversity_judge.txt",
    # LIFT's length instruction ({max_len}, {instruction}; lift.template, evaluate.length_template)
    "lift-paper": "selfimprove.scoring.lengths:PAPER_TEMPLATE",
}


def in_code(name: str) -> bool:
    return ":" in TEMPLATES.get(name, "")


def path(name: str) -> Path:
    """The file a template stands for: the package's prompt, the module a template written in code lives
    in, or the user's file (a name that is no template is a path)."""
    source = TEMPLATES.get(name)
    if source is None:
        return Path(name)
    if ":" in source:
        module = source.split(":", 1)[0]
        return PACKAGE_DIR.parent / f"{module.replace('.', '/')}.py"
    return PROMPTS_DIR / source


def exists(name: str) -> bool:
    return name in TEMPLATES or Path(name).is_file()


def placeholders(text: str) -> set[str]:
    """The `{name}` placeholders a template uses (not `{{literal}}` braces)."""
    return set(PLACEHOLDER_RE.findall(text))


def load(name: str, required: tuple[str, ...] = (), allowed: tuple[str, ...] | None = None,
         alternatives: list[tuple[str, ...]] | None = None, setting: str = "") -> str:
    """A template's text, checked: it uses every required placeholder and none outside allowed (default:
    exactly the required ones), or exactly one of the alternative sets. A template written in code is
    trusted (its tests check it)."""
    source = TEMPLATES.get(name, "")
    if ":" in source:
        module, attribute = source.split(":", 1)
        return getattr(importlib.import_module(module), attribute)
    file = path(name)
    if not file.is_file():
        where = f"{setting}: " if setting else ""
        raise UserError(f"{where}{name}: no such template file; use {suggestion(name)} or a path to a text file")
    text = file.read_text()
    found = placeholders(text)
    if alternatives and any(found == set(option) for option in alternatives):
        return text
    required = tuple((alternatives or [required])[0])
    allowed = set(required if allowed is None else allowed)
    missing, unknown = set(required) - found, found - allowed
    if missing or unknown:
        raise UserError(f"{file}: {_problem(required, allowed, missing, unknown)}")
    return text


def _problem(required, allowed: set, missing: set, unknown: set) -> str:
    needs = ", ".join("{" + p + "}" for p in required)
    if allowed != set(required):
        needs += " and may use only " + ", ".join("{" + p + "}" for p in sorted(allowed))
    text = f"a template needs the placeholders {needs}"
    if unknown:
        text += (f"; {', '.join('{' + u + '}' for u in sorted(unknown))} is not one (write {{{{ }}}} for a "
                 "literal brace)")
    return text


def suggestion(name: str, names=None) -> str:
    """'did you mean X?' for a near miss, else the list of names."""
    names = list(names or TEMPLATES)
    close = difflib.get_close_matches(name, names, n=1)
    return f"'{close[0]}' (did you mean it?)" if close else ", ".join(names)


def setting(default: str, names: str, help: str, placeholders: tuple[str, ...] = (),
            allowed: tuple[str, ...] | None = None, alternatives: tuple = (), optional: bool = False):
    """A stage's template setting: a registered name or a user's text file, which becomes a DVC
    dependency of the stages that read it (a package prompt counts as their code). The placeholders are
    those the stage fills: `validate` loads the template with them (check), as the stage does (read).
    optional: '' is allowed and names no template."""
    from selfimprove.core.stage import Reads, Setting

    names = f"'', {names}" if optional else names
    return Setting(str, default, help, check=(lambda v: not v or exists(v)) if optional else exists, file=True,
                   resolve_file=(lambda v: path(v) if v else None) if optional else path,
                   fix=f"is not a template: use {names} or a path to a text file",
                   reads=Reads("template", tuple(placeholders), allowed and tuple(allowed),
                               tuple(map(tuple, alternatives))))


def read(value: str, reads, where: str = "") -> str:
    """The text of a template setting's value, checked against the placeholders its declaration names
    (selfimprove.core.stage.Setting.reads): what a stage reads its template with."""
    return load(value, reads.placeholders, reads.allowed, [tuple(a) for a in reads.alternatives] or None, where)


def check(value: str, reads, where: str) -> None:
    """validate: the template read as its stage reads it (a missing or unknown placeholder refused)."""
    read(value, reads, where)
