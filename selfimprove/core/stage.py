"""What a stage declares about itself, next to its code: its settings, what it reads and writes, and how it
becomes a DVC node in an iteration's context. The loop loader checks settings against these
declarations and the compiler asks each stage of an iteration's pipeline for its node; neither knows any
stage by name.

A stage module ends with its declaration, e.g. (selfimprove/stages/vote.py):

    SETTINGS = {"extract": Setting(str, "final_number", "how a sample's final answer is read",
                                   choices=("final_number",))}

    @declaration
    def node(ctx: Context) -> dict:
        return ctx.node("vote", cmd=..., deps=[ctx.inputs["samples"]], outs=[ctx.outputs["votes"]])

    STAGE = Stage("vote", SETTINGS, reads=("samples",), writes={"votes": "votes.jsonl"}, node=node,
                  included=lambda s: needs(s) == "votes")

The declaration is not part of the stage's code fingerprint (selfimprove.pipeline.fingerprint): its effects reach
DVC as the node itself and as the params its settings resolve to.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Callable, ClassVar


def declaration(function: Callable) -> Callable:
    """Marks a function that only declares (a DVC node, a settings check): the code fingerprint skips it,
    so editing a node or a check re-runs nothing by itself (DVC sees a changed node in dvc.yaml)."""
    function.__selfimprove_declaration__ = True
    return function


@dataclass(frozen=True)
class Reads:
    """What a setting's value names, so that `validate` reads it as the stage will
    (selfimprove.loop.references): kind is a reader of the registry's FILE_KINDS (a template, preference
    pairs, example prompts, a model, a Python function, a YAML file), which the stage itself reads with.

    placeholders: a template's required placeholders; allowed: all it may use (None: those alone);
    alternatives: sets of which a template uses exactly one instead (a meta-judge's two forms).
    not_files: values that name nothing to read (a judge's `self`, `openai`).
    tokenizer: a model whose tokenizer the stage loads too."""

    kind: str
    placeholders: tuple[str, ...] = ()
    allowed: tuple[str, ...] | None = None
    alternatives: tuple[tuple[str, ...], ...] = ()
    not_files: tuple[str, ...] = ()
    tokenizer: bool = True


@dataclass(frozen=True)
class Setting:
    """One setting of a stage: its type and default, a one-line help, and its checks.

    file: the value names a file. A user's path becomes a DVC dependency of the stage by construction;
    `resolve_file` maps a name to the file it stands for (a builtin template to the package's prompt,
    which counts as code; see selfimprove.pipeline.fingerprint), or to None when no file stands behind it."""

    type: type
    default: Any
    help: str = ""
    choices: tuple = ()
    check: Callable[[Any], bool] | None = None
    fix: str = ""  # what the error says after the value when check fails, e.g. "must be >= 1"
    file: bool = False
    resolve_file: Callable[[str], Path | None] | None = None
    # A setting added after projects had run their loops: at its default (what the stage did before the
    # setting existed) it is left out of params, so upgrading re-runs nothing. Reading a section fills it in.
    omit_default: bool = False
    reads: Reads | None = None  # what validate reads the value as (a file's kind, a model, a function)
    # Setting.Reads: declared without a new import line in a stage module (an import would change its
    # code fingerprint, as Stage.Metric explains)
    Reads: ClassVar[type] = Reads

    @staticmethod
    def count(default: int, help: str, least: int = 1, **options) -> "Setting":
        """An integer of at least `least`: a size, a batch, a number of samples. (A staticmethod, so that a
        stage module declares one without a new import line, which would change its code fingerprint.)"""
        return Setting(int, default, help, check=lambda v: v >= least, fix=f"must be >= {least}", **options)


@dataclass(frozen=True)
class Metric:
    """One figure a stage writes into its metrics files, declared with the stage (Stage.metrics): what
    `selfimprove metrics`, `diff`, `plot`, RUN@best, the stop rules and the run's DVC plot know of it.

    name: the key in the metrics file, or a pattern with * for keys made at run time (judge_score_*).
    better: "higher" or "lower"; None for a count or a neutral figure.
    denominator: the metric holding the n of a rate, for its 95% Wilson interval (accuracy: problems).
    headline: a candidate for the loop kind's headline, the metric RUN@best picks by when the loop file
        has no `best:`; the first candidate a run reports, by order, is its headline.
    curve: drawn across iterations in the run's DVC plot (`dvc plots show`).
    order: its row in `metrics` and `diff`, lower first; None: after every placed metric, by name (as an
        undeclared figure is). Metrics of equal order keep the stages' and their declarations' order.
    role: what a stop rule reads it as: "length" (length_factor), "cost" (budget).
    unit: what it is measured in, for an axis label ("s", "characters"); a rate with a denominator
        needs none (it is a fraction of its denominator, selfimprove.core.figures.unit)."""

    name: str
    better: str | None = None
    denominator: str | None = None
    headline: bool = False
    curve: bool = False
    help: str = ""
    order: int | None = None
    role: str = ""
    unit: str = ""

    def __post_init__(self):
        if self.better not in ("higher", "lower", None):
            raise ValueError(f"metric {self.name}: better is higher, lower or None, not {self.better!r}")
        if self.pattern and (self.headline or self.curve or self.order is not None):
            raise ValueError(f"metric {self.name}: a pattern names no one figure to rank, plot or pick by")

    @property
    def pattern(self) -> bool:
        return "*" in self.name

    def matches(self, key: str) -> bool:
        return fnmatchcase(key, self.name) if self.pattern else key == self.name


@dataclass
class Stage:
    """A stage of the stage library.

    reads: artifacts an earlier stage of the iteration must write ("model" is always there: the policy),
        or a function of the iteration's settings giving them (pairs: what its rule needs).
    optional_reads: artifacts used when an earlier stage writes them.
    writes: artifact -> file name inside the iteration's directory ("model" replaces the policy;
        "metrics" and "<name>_stats" are metrics files, which the run's report collects).
    node(ctx) -> the DVC stage (cmd, deps, params, outs, metrics).
    included(settings of the iteration) -> whether a loop without `pipeline:` runs the stage.
    check(settings of the iteration, problems, path) -> cross-setting problems, added to problems.
    plugins(ctx) -> the registry entries (kind, name) whose code the stage runs (its backend, its rule);
        kind "module" names a module of the package outright.
    files(ctx) -> the (stage, key) file settings it reads; by default all of its
        own. Each names a project file (a DVC dependency) or a file of the package (code).
    adapter(settings of the iteration) -> whether the "model" it writes is a LoRA adapter, which needs the
        chain of models under it to load (the compiler makes that chain a dependency of its readers).
    lora_rank(settings of the iteration) -> the rank of the LoRA adapter its "model" is (0: a whole model);
        the warm engine sizes its adapter slots from it.
    model_code: modules of the package that using the "model" it writes runs (a temperature head's
        decoding): the compiler adds them to the code of every later stage that loads that model.
    settings_of: other stages whose settings it reads where the loop has them (evaluation: the judge's).
    base_iteration: also runs at iteration 0, on the base model (evaluation).
    scope: "iteration" (one node per iteration of its pipeline) or "run" (one node per run, last).
    metrics: the figures it writes (Metric); those marked curve are the run's plot across iterations
        (`dvc plots show`), in declaration order.
    plot(ctx) -> a top-level DVC plot definition {file: {x, y, title}} (a run-scope stage: the report)."""

    name: str
    settings: dict[str, Setting]
    node: Callable[["Context"], dict]
    reads: tuple[str, ...] | Callable[[dict], tuple[str, ...]] = ()
    optional_reads: tuple[str, ...] = ()
    writes: dict[str, str] = field(default_factory=dict)
    included: Callable[[dict], bool] = lambda settings: True
    check: Callable | None = None
    plugins: Callable[["Context"], list[tuple[str, str]]] = lambda ctx: []
    files: Callable[["Context"], list[tuple[str, str]]] | None = None
    adapter: Callable[[dict], bool] = lambda settings: False
    lora_rank: Callable[[dict], int] = lambda settings: 0
    model_code: tuple[str, ...] = ()
    settings_of: tuple[str, ...] = ()
    base_iteration: bool = False
    scope: str = "iteration"
    metrics: tuple[Metric, ...] = ()
    plot: Callable[["Context"], dict] | None = None
    module: str = ""  # set by the registry: the module whose code the stage runs
    # Stage.Metric: a stage module declares its metrics without importing Metric, since an import
    # is code and adding one would change the stage's fingerprint (re-run it).
    Metric: ClassVar[type] = Metric

    @property
    def curves(self) -> tuple[str, ...]:
        """The metrics it declares as curves (the compiler gathers the run's plot from them)."""
        return tuple(metric.name for metric in self.metrics if metric.curve)

    def defaults(self) -> dict:
        return {key: setting.default for key, setting in self.settings.items()}

    def tracked(self, values: dict) -> dict:
        return tracked_values(self.settings, values)

    def required(self, settings: dict) -> tuple[str, ...]:
        return tuple(self.reads(settings) if callable(self.reads) else self.reads)


def tracked_values(settings: dict[str, Setting], values: dict) -> dict:
    """The values params record: all but those an omit_default setting has at its default."""
    return {key: value for key, value in values.items()
            if not (key in settings and settings[key].omit_default and value == settings[key].default)}


@dataclass
class Context:
    """What a stage's node is compiled in: one iteration of one run.

    settings: every stage's resolved settings in this iteration (iteration 0 uses iteration 1's).
    inputs / outputs: artifact -> path, from the earlier stages of the pipeline / of this stage.
    policy: the model this iteration starts from; policy_is_dep: whether it is a file DVC hashes.
    tracked: the stage sections the run's params hold in every iteration (a stage may read another's).
    backend: the loop's generation backend; backend_keys: its params, tracked by the stages that sample.
    data_keys(side) / data_file(side): the data params a stage reading data.<side> tracks / its file.
    code_keys(stage, ctx): the params keys of the code fingerprints the stage's node depends on.
    file_deps(stage, ctx): the project files the stage's file settings name.
    project: the project directory (relative paths in settings are relative to it).
    data: the loop's data section (which builtin task's code a stage reading data runs).
    metrics: the metrics files of every node compiled so far in the run (the report reads them)."""

    run: str
    k: int
    out: str
    settings: dict[str, dict]
    policy: str
    policy_is_dep: bool
    base: str
    base_is_dep: bool
    inputs: dict[str, str]
    outputs: dict[str, str]
    tracked: tuple[str, ...]
    backend: str
    backend_keys: list[str]
    data_keys: Callable[[str], list[str]]
    data_file: Callable[[str], list[str]]
    code_keys: Callable[[Stage, "Context"], list[str]]
    file_deps: Callable[[Stage, "Context"], list[str]]
    iterations: int = 0
    project: Path = Path(".")
    data: dict = field(default_factory=dict)
    metrics: list[str] = field(default_factory=list)
    curves: list[str] = field(default_factory=list)  # what the run's stages declare as curves (the report's plot)
    # A run-scope stage's view of the run (the report): {K: {artifact: path}}, what each iteration's
    # pipeline ended with (the latest writer of each artifact), and the loop file, from the project root.
    artifacts: dict[int, dict[str, str]] = field(default_factory=dict)
    loop_file: str = ""

    def section(self, stage: str) -> str:
        """The params key of a stage's settings in this iteration, e.g. scpo.it2.pairs."""
        return f"{self.run}.it{self.k}.{stage}"

    def revision_keys(self, model: str) -> list[str]:
        """The base model's hub revision, tracked by the stages that load it (never later iterations')."""
        return [f"{self.run}.model_revision"] if model == self.base else []

    def command(self, stage: Stage, **paths: str) -> str:
        """`python -m <module> --params params.yaml --run R --iteration K --name path ...`."""
        flags = "".join(f" --{name.replace('_', '-')} {path}" for name, path in paths.items())
        return f"python -m {stage.module} --params params.yaml --run {self.run} --iteration {self.k}{flags}"

    def node(self, stage: Stage, cmd: str, deps: list[str], params: list[str] = (), outs: list[str] = (),
             metrics: list[str] = ()) -> dict:
        """A DVC node: deps are the stage's inputs, plus the files its settings name; params its own
        section, plus what it asks for, plus its code fingerprints; metrics are small and uncached."""
        node = {"cmd": cmd,
                "deps": list(dict.fromkeys(list(deps) + self.file_deps(stage, self))),
                "params": list(dict.fromkeys(list(params) + self.code_keys(stage, self)))}
        if outs:
            node["outs"] = list(outs)
        if metrics:
            node["metrics"] = [{path: {"cache": False}} for path in metrics]
        return node


@dataclass(frozen=True)
class Builtin:
    """A builtin model (`model: builtin:<name>`): built in the project by a builder stage, never
    downloaded. settings: the builder's settings for it, over its defaults (the bootstrap of the judging
    variant trains on judge examples; a converted model names its source). plugins(settings): the
    registry entries whose code the builder runs for it (its task)."""

    name: str
    builder: str  # the builder stage's module
    settings: dict
    checked: bool = True  # whether a loop's `bootstrap:` section applies (bootstrapped, not converted)
    plugins: Callable[[dict], list[tuple[str, str]]] = lambda settings: []

    @property
    def directory(self) -> str:
        return builtin_directory(self.name)

    def variant(self, settings: dict, builder_defaults: dict) -> str:
        """The name of this builtin built with settings (its builder's, resolved): its own name at its own
        settings, else <name>-<8 hex of the settings that differ>. A loop that bootstraps it another way
        gets another model (directory, stage, params key), so it never changes the base of other runs."""
        own = {**builder_defaults, **self.settings}
        differing = {key: value for key, value in sorted(settings.items()) if own.get(key) != value}
        if not differing:
            return self.name
        return f"{self.name}-{hashlib.sha256(json.dumps(differing, sort_keys=True).encode()).hexdigest()[:8]}"

    def code_units(self, settings: dict) -> list[str]:
        """The code its builder runs for these settings: the builder and its plugins' modules (what the
        compiler fingerprints as the bootstrap node's code.* params)."""
        from selfimprove.core.registry import module_of

        plugins = [name if kind == "module" else module_of(kind, name) for kind, name in self.plugins(settings)]
        return list(dict.fromkeys([self.builder] + plugins))


VARIANT = re.compile(r"(?P<name>.+)-[0-9a-f]{8}")


def builtin_directory(name: str) -> str:
    """Where a builtin (or a variant of one, Builtin.variant) is built in a project."""
    return f"runs/builtin/{name}"


def variant_of(name: str) -> str:
    """The registered builtin a name (its own, or a variant's) is built from."""
    from selfimprove.core.registry import BUILTIN_MODELS

    match = VARIANT.fullmatch(name)
    return match.group("name") if name not in BUILTIN_MODELS and match else name


def unit_key(unit: str) -> str:
    """The params key of a code unit: selfimprove.stages.generate -> stages-generate,
    selfimprove/shipped/prompts/additive.txt -> prompts-additive-txt (DVC splits keys on dots)."""
    name = unit.removeprefix("selfimprove.").removeprefix("selfimprove/").removeprefix("shipped/")
    return name.replace(".", "-").replace("/", "-")
