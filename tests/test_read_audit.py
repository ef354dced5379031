"""Every file a stage reads is a DVC dependency of it (or its own output, or params.yaml): one loop runs
every stage kind through DVC while an audit hook (tests/audit/sitecustomize.py) records, per process,
the project files it opens for reading. A read of anything else is a cache bug: editing that file
would leave the stage's result stale."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
AUDIT = Path(__file__).resolve().parent / "audit"

LOOP = """\
name: audit
model: builtin:tiny-arith-judge
data: {prompts: builtin:noisy-arith/train, eval: builtin:arith/test, prompts_size: 6, eval_size: 6, digits: 2}
bootstrap: {steps: 20, batch_size: 8}
iterations: 8
pipeline: [generate, judge, metajudge, pairs, train, evaluate]
stages:
  generate: {n: 3, max_new_tokens: 12, batch_size: 64}
  vote: {extract: final_number}
  judge: {template: my_judge.txt, n: 1, max_new_tokens: 12, max_failure_rate: 1.0}
  metajudge: {template: tiny-arith-meta, max_new_tokens: 12}
  reward: {source: "myreward:score", max_missing_rate: 1.0}
  pairs: {rule: best_vs_worst}
  synthesize: {examples: seed_prompts.jsonl, candidates: 4, max_new_tokens: 12}
  diversity: {max_new_tokens: 8}
  filter: {min_rejected_reward_pct: -1, min_rejected_length_pct: 10, max_gap_pct: -1, strict: false}
  train: {loss: dpo, batch_size: 4, max_length: 64}
  evaluate: {k: 2, max_new_tokens: 12, judge_size: 4, win_rate_size: 2}
schedule:
  2: {pipeline: [generate, vote, pairs, train, evaluate], pairs: {rule: system2, min_votes: 0.0, steps_only: false},
      train: {loss: sft}}
  3: {pipeline: [synthesize, generate, reward, diversity, pairs, filter, train, evaluate]}
  4: {pipeline: [lift, train, evaluate], lift: {pairs_file: user_prefs.jsonl, min_gap: 1},
      evaluate: {length_limit: 2}}
  5: {pipeline: [generate, perturb, pairjudge, pairs, train, judge_eval], pairs: {rule: judgement_sft},
      perturb: {template: my_perturb.txt, answer: solve, instruction_pattern: '^\s*(\S+)', tries: 2, max_new_tokens: 8},
      pairjudge: {template: tiny-arith-pairwise, n: 1, max_new_tokens: 12, max_failure_rate: 1.0},
      train: {loss: sft, from: base}, judge_eval: {pairs_file: eval_pairs.jsonl, k: 1, template: my_pairwise.txt}}
  6: {pipeline: [system2, vote, pairs, train, evaluate], system2: {step1_template: my_step1.txt,
      step2_template: rar-respond, n: 2, max_new_tokens: 8}, pairs: {rule: system2, min_votes: 0.0, steps_only: false},
      train: {loss: sft}}
  7: {pipeline: [bsm, train, evaluate], bsm: {pairs_file: user_prefs.jsonl, branches: 1, max_new_tokens: 6,
      merge_template: my_merge.txt}, train: {loss: sft}}
  8: {pipeline: [head, generate, reward, pairs, lpo, decoding], head: {temperatures: "0,1", width: 4},
      reward: {source: "myreward:distinct"}, pairs: {rule: latent}, lpo: {epochs: 1},
      decoding: {temperatures: "0,1", k: 2, max_new_tokens: 8}}
"""


def _allowed(path: str, node: dict) -> bool:
    """A dependency or output of the node (a file or anything inside a directory), its scratch area
    beside an output (.<name>-shards, .<name>-checkpoints), or the params file."""
    outs = [o if isinstance(o, str) else next(iter(o)) for o in node.get("outs", [])]
    outs += [next(iter(m)) for m in node.get("metrics", []) + node.get("plots", [])]
    allowed = node.get("deps", []) + outs
    scratch = [str(Path(o).parent / f".{Path(o).stem}-") for o in outs] + [str(Path(o).parent / f".{Path(o).name}-")
                                                                          for o in outs]
    return (path == "params.yaml" or any(path == a or path.startswith(a.rstrip("/") + "/") for a in allowed)
            or any(path.startswith(s) for s in scratch))


def test_every_stage_kind_reads_only_its_dependencies(tmp_path):
    (tmp_path / "loop.yaml").write_text(LOOP)
    (tmp_path / "my_judge.txt").write_text("{question}{response} judge:")
    (tmp_path / "seed_prompts.jsonl").write_text("".join(f'{{"question": "{a}+{a + 7}="}}\n' for a in range(12, 20)))
    (tmp_path / "user_prefs.jsonl").write_text("".join(f'{{"prompt": "{a}+1=", "chosen": " #### {a + 1}", '
                                                        f'"rejected": " 1+1=2 r2; #### 3"}}\n' for a in range(10, 16)))
    (tmp_path / "my_perturb.txt").write_text("{question}{response} modify:")
    (tmp_path / "my_pairwise.txt").write_text("{question} A:{response_a} B:{response_b} pair:")
    (tmp_path / "my_step1.txt").write_text("{question}")
    (tmp_path / "my_merge.txt").write_text("{question} {response_a} {response_b} {evaluations} merge:")
    (tmp_path / "eval_pairs.jsonl").write_text("".join(f'{{"prompt": "{a}+2=", "chosen": " #### {a + 2}", '
                                                        f'"rejected": " #### {a + 3}"}}\n' for a in range(10, 13)))
    (tmp_path / "myreward.py").write_text("def score(question, response, gold):\n    return float(len(response) % 3)\n\n\n"
                                          "def distinct(question, responses, gold):\n"
                                          "    return [float(responses.count(r) == 1) for r in responses]\n\n\n"
                                          "distinct.per_prompt = True\n")
    logs = tmp_path / "audit-logs"
    logs.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(AUDIT), str(tmp_path),
                                                                     os.environ.get("PYTHONPATH")])),
               SELFIMPROVE_AUDIT_DIR=str(logs), SELFIMPROVE_AUDIT_ROOT=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "selfimprove.cli", "run", "loop.yaml"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    nodes = yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]
    by_args = {tuple(shlex.split(node["cmd"])[3:]): name for name, node in nodes.items()}
    audited, violations = set(), []
    for log in logs.glob("*.json"):
        record = json.loads(log.read_text())
        if "/selfimprove/stages/" not in record["argv"][0]:
            continue  # selfimprove run, dvc, or a helper process
        name = by_args[tuple(record["argv"][1:])]
        audited.add(name)
        violations += [f"{name} reads {path}" for path in record["reads"] if not _allowed(path, nodes[name])]
    assert not violations, "\n".join(violations)
    kinds = {"bootstrap" if name.startswith("bootstrap-") else name.rsplit("-", 1)[-1] for name in audited}
    assert kinds >= {"generate", "vote", "judge", "metajudge", "reward", "pairs", "filter", "train", "evaluate",
                     "report", "bootstrap", "synthesize", "diversity", "lift", "perturb", "pairjudge", "judge_eval",
                     "system2", "bsm", "head", "lpo", "decoding"}, kinds  # every stage kind ran and was audited
    assert "my_judge.txt" in nodes["audit-it1-judge"]["deps"] and "myreward.py" in nodes["audit-it3-reward"]["deps"]
    assert "seed_prompts.jsonl" in nodes["audit-it3-synthesize"]["deps"]
    assert nodes["audit-it4-lift"]["deps"] == ["user_prefs.jsonl"]
    assert "my_perturb.txt" in nodes["audit-it5-perturb"]["deps"]
    assert {"eval_pairs.jsonl", "my_pairwise.txt"} <= set(nodes["audit-it0-judge_eval"]["deps"])  # as iteration 5's
    assert "my_step1.txt" in nodes["audit-it6-system2"]["deps"]
    assert {"user_prefs.jsonl", "my_merge.txt"} <= set(nodes["audit-it7-bsm"]["deps"])
    assert "myreward.py" in nodes["audit-it0-decoding"]["deps"] and "myreward.py" in nodes["audit-it8-decoding"]["deps"]
