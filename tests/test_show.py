"""`selfimprove show RUN@K`: an iteration's prompts, their samples and scores, the pair each made or why
none, on run directories of every loop kind made by the real stage functions (a scripted model where a
stage samples), read back through the CLI as a user sees them at 80 columns."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fakes import ScriptedModel
from selfimprove.cli import main
from selfimprove.core import registry
from selfimprove.core.registry import stage_defaults
from selfimprove.stages._io import write_json, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [("12+30=", "42"), ("5+6=", "11"), ("20+20=", "40"), ("7+8=", "15")]
WORKED = {"42": " 2+0=2 r2; 1+3=4 r42; #### 42", "15": " 7+8=15 r15; #### 15"}
# Four samples per prompt, per iteration: a clear majority (a pair), no majority (below tau), every sample
# agreeing (nothing to reject), a wrong majority (a pair whose chosen response is wrong).
VOTES = {1: {"12+30=": [WORKED["42"], " #### 42", " #### 42", " #### 41"],
             "5+6=": [" #### 12", " #### 13", " #### 14", " #### 11"],
             "20+20=": [" #### 40"] * 4,
             "7+8=": [" #### 16", " #### 16", " #### 16", WORKED["15"]]},
         2: {"12+30=": [" #### 42"] * 3 + [" #### 43"],
             "5+6=": [" #### 11", " #### 11", " #### 12", " #### 11"],
             "20+20=": [" #### 40"] * 4,
             "7+8=": [" #### 15", " #### 15", " #### 16", " #### 17"]}}
# For the judge: wrong answers of three lengths (RIP's filter reads the rejected one's), and a prompt whose
# samples are all right (a tie); for the reward: a prompt with no right sample (below the floor).
JUDGED = {"12+30=": [WORKED["42"], " #### 42", " #### 42", " #### 41"],
          "5+6=": [" #### 11", " #### 12 as 5+6 is 12", " #### 12 as 5+6 is 12", " #### 12 as 5+6 is 12"],
          "20+20=": [" #### 40"] * 4,
          "7+8=": [" #### 15", " 7+8=16 r16; #### 16", " 7+8=16 r16; #### 16", " #### 15"]}
REWARDED = {**VOTES[1], "5+6=": [" #### 12", " #### 13", " #### 14", " #### 12"]}
LIFTED = {**VOTES[1], "12+30=": [WORKED["42"]] * 3 + [" #### 41"]}  # a worked chosen, a direct rejected


class Project:
    """A project directory: params.yaml as compile writes it (one section per run and iteration), and
    runs/RUN/itK/ with what each stage wrote."""

    def __init__(self, root: Path):
        self.root, self.params = root, {}

    def it(self, run: str, k: int, **sections) -> Path:
        self.params.setdefault(run, {})[f"it{k}"] = sections
        (self.root / "params.yaml").write_text(yaml.safe_dump(self.params))
        directory = self.root / "runs" / run / f"it{k}"
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def stage(self, module: str, run: str, k: int, **paths) -> None:
        """A stage's own command line (python -m selfimprove.stages.X --params ... --run ... --iteration ...)."""
        import importlib

        self.params[run][f"it{k}"].setdefault(module, {})  # the stage's section, as compile writes it
        (self.root / "params.yaml").write_text(yaml.safe_dump(self.params))
        argv = ["--params", str(self.root / "params.yaml"), "--run", run, "--iteration", str(k)]
        for name, path in paths.items():
            argv += [f"--{name.replace('_', '-')}", str(path)]
        importlib.import_module(f"selfimprove.stages.{module}").main(argv)


def records(prompts=PROMPTS) -> list[dict]:
    return [{"id": i, "question": q, "answer": a, "solution": None} for i, (q, a) in enumerate(prompts)]


def generate(out: Path, replies: dict, n: int = 4, backend=None) -> list[dict]:
    from selfimprove.stages.generate import generate as sample, generation_stats
    from selfimprove.stages._io import read_jsonl

    settings = dict(stage_defaults("generate"), n=n, shard_size=8, batch_size=8)
    backend = backend or ScriptedModel(reply=lambda prompt, j, rng: replies[prompt][j])
    sample(settings, records(), "unused", out, "{question}", backend=backend)
    write_json(out.parent / "generate.json", generation_stats(records(), out, backend, 0.0))
    return read_jsonl(out)


def judge_scores(prompts: list[str], right: list[str], wrong: list[str]) -> list[list[str]]:
    """A scripted judge: `right` for a response with the prompt's gold answer, `wrong` otherwise."""
    gold = dict(PROMPTS)
    found = []
    for prompt in prompts:
        question = next(q for q in gold if q in prompt)
        answer = re.findall(r"#### (\d+)", prompt)
        found.append(right if answer and answer[-1] == gold[question] else wrong)
    return found


def judged(project: Project, run: str, directory: Path, right: list[str], wrong: list[str]) -> None:
    from selfimprove.stages.judge import judge

    samples = generate(directory / "samples.jsonl", JUDGED)
    settings = dict(stage_defaults("judge"), n=len(right), shard_size=8, batch_size=8)
    _, figures = judge(settings, samples, "unused", directory / "judgements.jsonl", backend=ScriptedModel(),
                       generate_judgements=lambda prompts, shard, done: judge_scores(prompts, right, wrong))
    write_json(directory / "judge.json", figures)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """One project with a run of each loop kind (names: the kind)."""
    root = tmp_path_factory.mktemp("show")
    p = Project(root)
    for k in (1, 2):  # ScPO: generate, vote, pairs (most_vs_least_voted), and iteration 0's evaluation
        directory = p.it("vote", k, pairs={"min_votes": 0.5})
        generate(directory / "samples.jsonl", VOTES[k])
        p.stage("vote", "vote", k, samples=directory / "samples.jsonl", out=directory / "votes.jsonl")
        p.stage("pairs", "vote", k, scored=directory / "votes.jsonl", out=directory / "pairs.jsonl",
                stats=directory / "pairs.json")
        write_json(directory / "metrics.json", {"accuracy": 0.5 + k / 10, "problems": 4})
    write_json(p.it("vote", 0) / "metrics.json", {"accuracy": 0.25, "problems": 4})

    # Self-Rewarding with RIP's filter: judge (two judgements each), best vs worst, filter (ties kept)
    directory = p.it("judge", 1, judge={"n": 2}, pairs={"rule": "best_vs_worst"}, filter={"strict": False})
    judged(p, "judge", directory, ["Score: 5", "Score: 4"], ["Score: 1", "Score: 2"])
    p.stage("pairs", "judge", 1, scored=directory / "judgements.jsonl", out=directory / "pairs.jsonl",
            stats=directory / "pairs.json")
    p.stage("filter", "judge", 1, pairs=directory / "pairs.jsonl", out=directory / "pairs_kept.jsonl",
            stats=directory / "filter.json")

    # Meta-Rewarding: the judge's judgements, judge pairs from the meta-judge, both kinds in pairs.jsonl
    directory = p.it("meta", 1, judge={"n": 3}, metajudge={}, pairs={"rule": "best_vs_worst", "judge_pairs": True})
    judged(p, "meta", directory, ["Score: 5", "Score: 3", "Score: 4"], ["Score: 1", "Score: 2", "Score: 1"])
    meta_judge(directory)
    p.stage("pairs", "meta", 1, scored=directory / "judgements.jsonl", out=directory / "pairs.jsonl",
            stats=directory / "pairs.json", judge_pairs=directory / "judge_pairs.jsonl")

    # NaturalReasoning: a reward rule and rejection-sampling SFT (best_of_n), with a floor
    directory = p.it("reward", 1, reward={"source": "correct"}, pairs={"rule": "best_of_n", "min_score": 0.5})
    rewarded(directory, REWARDED)
    p.stage("pairs", "reward", 1, scored=directory / "rewards.jsonl", out=directory / "pairs.jsonl",
            stats=directory / "pairs.json")

    # LIFT on ScPO's pairs
    directory = p.it("lift", 1, pairs={"min_votes": 0.5}, lift={"min_gap": 2})
    generate(directory / "samples.jsonl", LIFTED)
    p.stage("vote", "lift", 1, samples=directory / "samples.jsonl", out=directory / "votes.jsonl")
    p.stage("pairs", "lift", 1, scored=directory / "votes.jsonl", out=directory / "pairs.jsonl",
            stats=directory / "pairs.json")
    p.stage("lift", "lift", 1, pairs=directory / "pairs.jsonl", out=directory / "pairs_lift.jsonl",
            stats=directory / "lift.json")

    self_taught_evaluator(p)
    system2_distillation(p)
    adaptive_decoding(p)
    return root


def meta_judge(directory: Path) -> None:
    from selfimprove.stages._io import read_jsonl
    from selfimprove.stages.metajudge import metajudge

    def verdicts(prompts, shard, done):  # the meta-judge prefers the judgement with the higher score
        pattern = r"<judgment A>Score: (\d)</judgment A>\s*<judgment B>Score: (\d)"
        found = [re.search(pattern, p).groups() for p in prompts]
        return [f"Winner: {'A' if a >= b else 'B'}" for a, b in found]

    settings, judge_settings = stage_defaults("metajudge"), dict(stage_defaults("judge"), n=3)
    _, stats = metajudge(settings, judge_settings, read_jsonl(directory / "judgements.jsonl"), "unused",
                         directory / "judge_pairs.jsonl", generate_verdicts=verdicts)
    write_json(directory / "metajudge.json", stats)


def rewarded(directory: Path, replies: dict, n: int = 4, backend=None) -> None:
    from selfimprove.stages.reward import reward

    scored, figures = reward(dict(stage_defaults("reward"), source="correct"),
                             generate(directory / "samples.jsonl", replies, n=n, backend=backend))
    write_jsonl(directory / "rewards.jsonl", scored)
    write_json(directory / "reward.json", figures)


def self_taught_evaluator(p: Project) -> None:
    """Contrast pairs from perturb (the answer to a nearby problem), judged in both orders by pairjudge,
    judgement SFT (Self-Taught Evaluator); and Branch-Solve-Merge on the same contrast pairs (bsm)."""
    from selfimprove.stages import bsm, pairjudge, perturb
    from selfimprove.tasks import arith_evaluator

    def model(prompt, j, rng):
        if prompt.endswith(" modify:"):
            x, y = map(int, prompt.split("=")[0].split("+"))
            return f" {x}+{y + 1}="
        x, y = map(int, prompt[:-1].split("+"))
        return f" #### {x + y}"

    def judge(prompt, j, rng):  # right in the first order, position-biased (always B) in the second
        question, answer_a = re.match(r"(\d+\+\d+=)(\d+) B:", prompt).groups()
        x, y = map(int, question[:-1].split("+"))
        return arith_evaluator.pairwise_judgement(x, y, answer_a, None if answer_a == str(x + y) else "B")

    settings = dict(stage_defaults("perturb"), template="tiny-arith-perturb", answer="solve", good="majority",
                    instruction_pattern=r"^\s*(\d+\+\d+=)", response_marker="####", batch_size=8, shard_size=8)
    for run in ("ste", "bsm"):
        directory = p.it(run, 1, perturb=settings, pairjudge={"template": "tiny-arith-pairwise", "n": 2},
                         pairs={"rule": "judgement_sft"})
        samples = generate(directory / "samples.jsonl", {q: [f" #### {a}"] * 2 for q, a in PROMPTS}, n=2)
        samples = [row for row in samples if row["id"] != 2]  # prompt 2 gets no contrast pair
        _, figures = perturb.perturb(settings, stage_defaults("generate"), samples, "unused",
                                     directory / "contrast.jsonl", "{question}", backend=ScriptedModel(reply=model))
        write_json(directory / "perturb.json", figures)
    directory = p.root / "runs/ste/it1"
    judge_settings = dict(stage_defaults("pairjudge"), template="tiny-arith-pairwise", response_marker="####", n=2,
                          batch_size=8, shard_size=8)
    from selfimprove.stages._io import read_jsonl

    _, figures = pairjudge.pair_judge(judge_settings, read_jsonl(directory / "contrast.jsonl"), "unused",
                                      directory / "pair_judgements.jsonl", backend=ScriptedModel(reply=judge))
    write_json(directory / "pairjudge.json", figures)
    p.stage("pairs", "ste", 1, scored=directory / "pair_judgements.jsonl", out=directory / "pairs.jsonl",
            stats=directory / "pairs.json")

    def branch_solve_merge(prompt, j, rng):  # one criterion; A meets it when A's answer is the sum
        if prompt.startswith("Evaluate the two responses"):
            question = prompt.split("[User Question]")[1].split("[The Start")[0].strip()
            answer_a = prompt.split("[The Start of Assistant A's Answer]")[1].split("[The End")[0].split("####")[-1]
            return "A meets it" if int(answer_a) == sum(map(int, question[:-1].split("+"))) else "B meets it"
        if "[Evaluations]" in prompt:
            return "[[A]]" if "A meets it" in prompt else "[[B]]"
        return "- correctness"

    directory = p.root / "runs/bsm/it1"
    bsm_settings = dict(stage_defaults("bsm"), batch_size=8)
    _, figures = bsm.bsm(bsm_settings, bsm.input_pairs(bsm_settings, str(directory / "contrast.jsonl")), "unused",
                         directory / "pairs_bsm.jsonl", backend=ScriptedModel(reply=branch_solve_merge))
    write_json(directory / "bsm.json", figures)


def system2_distillation(p: Project) -> None:
    """Rephrase-and-Respond samples (two steps), voted, distilled to the majority answer (rule system2)."""
    from selfimprove.stages.system2 import system2

    def model(prompt, j, rng):  # rephrases, then answers right but in one chain of three
        question = next(q for q, _ in PROMPTS if q in prompt)
        if prompt.startswith("Given the question below, rephrase"):
            return f"What is {question[:-1]}? ({j})"
        return f" #### {99 if '(0)' in prompt else dict(PROMPTS)[question]}"

    directory = p.it("s2", 1, system2={"step1_template": "rar-rephrase", "step2_template": "rar-respond", "n": 3},
                     pairs={"rule": "system2", "steps_only": False, "min_votes": 0.5})
    settings = dict(stage_defaults("system2"), step1_template="rar-rephrase", step2_template="rar-respond", n=3,
                    batch_size=8, shard_size=8)
    system2(settings, records(), "unused", directory / "samples.jsonl", "{question}",
            backend=ScriptedModel(reply=model))
    write_json(directory / "system2.json", {"system2_prompts": 4, "system2_chains": 12, "system2_steps": 2})
    p.stage("vote", "s2", 1, samples=directory / "samples.jsonl", out=directory / "votes.jsonl")
    p.stage("pairs", "s2", 1, scored=directory / "votes.jsonl", out=directory / "pairs.jsonl",
            stats=directory / "pairs.json")


def adaptive_decoding(p: Project) -> None:
    """Samples decoded with a temperature head's temperatures, rewarded, paired by their latent choice."""
    directory = p.it("decode", 1, generate={"n": 2}, reward={"source": "correct"}, pairs={"rule": "latent"})
    backend = ScriptedModel(reply=lambda prompt, j, rng: VOTES[1][prompt][j * 3], temperature_head=object())
    backend.enqueue_temperatures([[0.5, 1.0]] * 4)
    rewarded(directory, VOTES[1], n=2, backend=backend)
    p.stage("pairs", "decode", 1, scored=directory / "rewards.jsonl", out=directory / "pairs.jsonl",
            stats=directory / "pairs.json")
    write_json(directory / "decoding.json", {"score_adaptive": 0.5})


def show(*args: str, code: int = 0) -> str:
    """`selfimprove show ARGS` in the current directory, as a terminal of 80 columns shows it."""
    result = CliRunner().invoke(main, ["show", *args], env={"COLUMNS": "80"}, catch_exceptions=False)
    assert result.exit_code == code, result.output
    if code == 0 and "--json" not in args:  # (an error is one line, however long: the CLI's one abort path)
        assert all(len(line) <= 80 for line in result.output.splitlines()), result.output
    return "".join(line.rstrip() + "\n" for line in result.output.splitlines())  # what shows: no padding


@pytest.fixture
def at(project, monkeypatch):
    monkeypatch.chdir(project)
    return show


def blocks(output: str) -> dict[str, str]:
    """The page cut into its prompts: {id: the prompt's lines}."""
    found, current = {}, None
    for line in output.splitlines():
        head = re.match(r"(?:\S+, )?prompt (\S+) ─", line)
        if head:
            current = head.group(1)
            found[current] = ""
        elif current is not None:
            found[current] += line.rstrip() + "\n"
    return found


def test_a_vote_loop_shows_samples_votes_the_pair_and_why_a_prompt_made_none(at):
    output = at("vote@1", "--limit", "4")
    assert all(len(line) <= 80 for line in output.splitlines())
    assert output.splitlines()[0] == "vote@1: 4 prompts, 2 with a pair, 2 without (1 below tau, 1 unanimous)"
    page = blocks(output)
    assert list(page) == ["0", "1", "2", "3"]
    assert "question 12+30=   gold 42" in page["0"]
    assert "votes (n=4): 42 (3), 41 (1); majority 42 (right)" in page["0"]
    assert re.search(r"3 +41 +1 +✗ +#### 41", page["0"])  # sample 3: its answer, votes, mark and text
    assert "pair by pairs, weight 0.5, trained on" in page["0"] and "why: votes 3 vs 1 of 4" in page["0"]
    assert re.search(r"chosen +#1 ✓ +#### 42\n", page["0"]) and re.search(r"rejected +#3 ✗ +#### 41", page["0"])
    assert ("no pair (pairs): below tau: its top answer 12 has 1 of 4 votes, under tau = 0.5 x 4 = 2 "
            "(pairs.min_votes)") in " ".join(page["1"].split())
    assert "no pair (pairs): unanimous: every sample answers 40: nothing to reject" in page["2"]
    assert "majority 16 (wrong)" in page["3"] and re.search(r"chosen +#0 ✗ +#### 16", page["3"])
    assert re.search(r"rejected +#3 ✓ +7\+8=15 r15; #### 15", page["3"])
    assert "held-out: evaluate wrote no per-problem answers" in " ".join(output.split())


def test_filters_sort_and_pages_narrow_the_page(at):
    assert list(blocks(at("vote@1", "--only", "pairs"))) == ["0", "3"]
    assert list(blocks(at("vote@1", "--only", "dropped"))) == ["1", "2"]
    assert list(blocks(at("vote@1", "--only", "wrong"))) == ["1", "3"]  # majorities 12 and 16
    assert list(blocks(at("vote@1", "--search", "7+8"))) == ["3"]
    assert list(blocks(at("vote@1", "--search", "r42"))) == ["0"]  # in a sample's text
    assert list(blocks(at("vote@1", "--id", "2"))) == ["2"]
    assert list(blocks(at("vote@1", "--sort", "margin"))) == ["0", "3", "1", "2"]  # 0.5, 0.5, then no pair
    assert list(blocks(at("vote@1", "--sort", "length", "--limit", "1")))[0] == "0"  # its worked sample
    second = at("vote@1", "--limit", "3", "--page", "2")
    assert list(blocks(second)) == ["3"] and "page 2 of 2: prompts 4-4 of 4 shown" in second
    assert "--page 2 for more" in at("vote@1", "--limit", "3")


def test_one_prompt_across_iterations(at):
    output = at("vote@1..2", "--id", "1")
    first, second = output.split("vote@2, prompt 1 ─")
    assert first.startswith("vote@1, prompt 1 ─") and "no pair (pairs): below tau" in first
    assert "votes (n=4): 11 (3), 12 (1); majority 11 (right)" in second
    assert "pair by pairs, weight 0.5, trained on" in second
    data = json.loads(at("vote@1..2", "--id", "1", "--json"))
    assert [i["iteration"] for i in data["iterations"]] == [1, 2]
    assert data["iterations"][0]["prompt"]["no_pair"]["reason"] == "below tau"
    assert data["iterations"][1]["prompt"]["pairs"][0]["trained"] is True


@pytest.mark.parametrize("args, message", [
    (["vot@1"], "error: no run named 'vot' in "),
    (["vote@9"], "error: vote@9: iteration 9 has not run; vote has iterations vote@0, vote@1, vote@2"),
    (["vote@2..1"], "error: vote@2..1: a range goes up, e.g. vote@1..2"),
    (["vote@1..2"], "error: vote@1..2: a range shows one prompt across iterations; add --id ID"),
    (["vote@1", "--id", "99"], "error: vote@1: no prompt with id '99'; its ids run from 0 to 3 (4 prompts)"),
    (["vote@1..2", "--id", "99"], "error: vote@1..2: no prompt with id '99' in any of them"),
    (["vote@1", "--page", "3"], "error: page 3: there is 1 page(s) of 5 prompts (4 in all); use --page 1..1"),
    (["vote@0"], "error: vote@0 has no prompts (it ran evaluate; iteration 0 evaluates the base model only); "
                 "prompts are in vote@1, vote@2"),
    (["vote@x"], "error: vote@x: expected RUN@K or RUN@K..L"),
])
def test_errors_are_one_line(at, args, message):
    output = at(*args, code=2)
    assert output.startswith(message) and output.count("\n") == 1 and "Traceback" not in output
    if args == ["vot@1"]:
        assert "did you mean 'vote'?" in output


def test_json_for_scripts(at):
    data = json.loads(at("vote@1", "--json", "--limit", "2"))
    assert data["summary"] == {"prompts": 4, "with_pair": 2, "without_pair": 2,
                               "reasons": {"below tau": 1, "unanimous": 1}, "pair_stages": ["pairs"]}
    first = data["prompts"][0]
    assert (first["id"], first["question"], first["gold"]) == (0, "12+30=", "42")
    assert [s["fields"]["votes"] for s in first["samples"]] == [3, 3, 3, 1]
    pair = first["pairs"][0]
    assert (pair["weight"], pair["chosen_sample"], pair["rejected_sample"], pair["margin"]) == (0.5, 1, 3, 0.5)
    assert pair["chosen"] == " #### 42" and pair["fields"]["source"] == "vote" and pair["trained"] is True
    assert data["pages"] == 2 and data["stages"] == ["generate", "vote", "pairs", "evaluate"]


def test_a_judge_loop_shows_scores_judgements_ties_and_rip_s_filter(at):
    page = blocks(at("judge@1", "--judgements"))
    assert re.search(r"#  score  scores  right  samples \(4\)", page["0"])
    assert re.search(r"0 +4\.5 +5 4 +✓", page["0"]) and "#0 judgement 1 Score: 5" in page["0"]
    assert "no pair (pairs): ties: every response scores 4.5" in page["2"]
    assert "why: scores 4.5 vs 1.5, margin 3; length 28 vs 7" in page["0"]
    assert ("dropped: filter: rejected length 7 is below its p50 = 19 (filter.min_rejected_length_pct)"
            in " ".join(page["0"].split()))
    assert "pair by pairs, weight 1, trained on" in page["1"] and "pair by pairs, weight 1\n" in page["0"]
    assert list(blocks(at("judge@1", "--only", "dropped"))) == ["0", "2"]
    assert at("judge@1").splitlines()[0] == "judge@1: 4 prompts, 2 with a pair, 2 without (1 dropped by filter, 1 ties)"


def test_meta_rewarding_shows_its_judge_pairs_once(at):
    output = at("meta@1", "--id", "0")
    assert "pair by pairs, weight 1, trained on" in output
    assert output.count("pair by metajudge, weight 1, trained on") == 1  # in judge_pairs.jsonl and pairs.jsonl
    assert re.search(r"chosen +Score: 5\n", output) and re.search(r"rejected +Score: 3\n", output)
    assert "why: scores 5 vs 3, margin 2; chosen judgement's verdict is right" in output
    assert re.search(r"prompt +Review the user's question", output)  # the meta pair trains the judge prompt


def test_rejection_sampling_sft_shows_its_target_and_the_floor(at):
    page = blocks(at("reward@1"))
    assert "example by pairs, weight 1, trained on" in page["0"] and "why: best score 1" in page["0"]
    assert re.search(r"target #0 ✓ 2\+0=2 r2; 1\+3=4 r42; #### 42", page["0"]) and "rejected" not in page["0"]
    assert ("no pair (pairs): below min score: its best score 0 is under pairs.min_score = 0.5"
            in " ".join(page["1"].split()))


def test_self_taught_evaluator_shows_contrast_pairs_and_verdicts(at):
    page = blocks(at("ste@1", "--judgements"))
    assert "contrast pair (perturb)" in page["0"] and re.search(r"modified instruction +12\+31=", page["0"])
    assert re.search(r"bad \(wrong\) +#### 43", page["0"])
    assert "judged by pairjudge, right verdict A: A A (2 of 2 right)" in page["0"]
    assert "judged by pairjudge, right verdict B: B B (2 of 2 right)" in page["0"]
    assert "judgement 1 2+0=2 r2; 1+3=4 r42; 42 vs 42: 4=4, 2=2. [[A]]" in page["0"]
    assert "why: right verdict A" in page["0"] and re.search(r"target +2\+0=2 r2; .* \[\[A\]\]\n", page["0"])
    assert re.search(r"prompt +12\+30=43 B:42 pair:", page["0"])  # the second order's judge prompt
    assert "no contrast pair: perturb made none of it" in page["2"] and "no pair" not in page["2"]


def test_lift_and_bsm_pairs(at):
    lifted = blocks(at("lift@1"))["0"]
    assert lifted.count("pair by lift, weight 0.5, trained on") == 2 and "pair by pairs, weight 0.5" in lifted
    assert "why: votes 3 vs 1 of 4; length limit 19 words\n" in lifted
    assert "why: votes 1 vs 3 of 4; length limit 3 words, which swaps the pair" in lifted
    assert re.search(r"prompt +Answer the following instruction using 3 words or less. ⏎ 12\+30=", lifted)
    assert re.search(r"chosen +#3 ✗ +#### 41\n", lifted)  # the swapped pair: its chosen is the wrong answer
    bsm = blocks(at("bsm@1"))
    assert bsm["0"].count("example by bsm, weight 1, trained on") == 2
    assert re.search(r"target +\[\[A\]\]\n", bsm["0"]) and re.search(r"target +\[\[B\]\]\n", bsm["0"])


def test_system2_distillation_shows_steps_with_full(at):
    short, full = blocks(at("s2@1"))["0"], blocks(at("s2@1", "--full"))["0"]
    assert "step 1" not in short and "#0 step 1 What is 12+30? (0)" in full
    assert re.search(r"0  99 +1 +✗ +#### 99", short)
    assert "votes (n=3): 42 (2), 99 (1); majority 42 (right)" in short
    assert "example by pairs, weight 1, trained on" in short and "answer 42, given by 67% of 3 samples" in short
    assert re.search(r"target #1 ✓ #### 42", short)


def test_adaptive_decoding_shows_the_head_s_temperatures(at):
    page = blocks(at("decode@1"))
    assert re.search(r"#  temp  score  right", page["0"]) and re.search(r"1 +1 +0 +✗ +#### 41", page["0"])
    assert "why: scores 1 vs 0, margin 1; temperature 0.5 vs 1" in page["0"]
    assert "no pair (pairs): ties: every response scores 1" in page["2"]


def test_held_out_answers_where_evaluate_writes_them(project, at):
    assert "evaluate wrote no per-problem answers, only its metrics (accuracy 0.6 on 4 problems)" in " ".join(
        at("vote@1", "--heldout").split())
    directory = project / "runs/vote/it2"
    write_jsonl(directory / "outputs.jsonl", [{"id": 0, "question": "3+4=", "output": " #### 7"}])
    try:
        output = at("vote@2", "--heldout")
        assert "vote@2: the held-out evaluation's greedy answers, 1 problems" in output
        assert re.search(r"0 +3\+4= +#### 7", output)
        assert "--heldout shows them" in at("vote@2")
    finally:
        (directory / "outputs.jsonl").unlink()


def test_every_jsonl_artifact_a_stage_writes_has_a_view():
    from selfimprove.results.show import view_of

    for stage in registry.stages():
        for artifact, name in stage.writes.items():
            if name.endswith(".jsonl"):
                assert view_of(stage.name, artifact) is not None, f"{stage.name} writes {artifact}: add a view (VIEWS)"
    for name in registry.VIEWS:
        assert callable(registry.resolve("view", name))


def test_show_never_imports_torch(project):
    code = ("import sys; from click.testing import CliRunner; from selfimprove.cli import main;"
            "r = CliRunner().invoke(main, ['show', 'judge@1', '--json']); assert r.exit_code == 0, r.output;"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], cwd=project, check=True)


def test_the_finished_default_run_reads(monkeypatch):
    """The default loop's run in this checkout (runs/scpo), where one has finished."""
    if not (ROOT / "runs/scpo/it1/pairs.jsonl").is_file():
        pytest.skip("no finished run of loops/scpo.yaml in this checkout")
    monkeypatch.chdir(ROOT)
    data = json.loads(show("scpo@1", "--json", "--limit", "2"))
    stats = json.loads((ROOT / "runs/scpo/it1/pairs.json").read_text())
    assert data["summary"]["with_pair"] == stats["pairs"]
    assert data["summary"]["reasons"].get("below tau", 0) == stats["dropped_below_tau"]
    assert "scpo@3, prompt 1 ─" in show("scpo@1..3", "--id", "1")
