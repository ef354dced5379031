"""The report stage (selfimprove.stages.report): a run's metrics files merged per iteration, its curves
file, and the headline line, from hand-made metrics files in a temporary run folder."""

import json

from selfimprove.stages.report import collect, curves, iteration_figures, main


def write(path, figures: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures))
    return str(path)


def test_iteration_figures_merge_an_iteration_s_files_in_name_order(tmp_path):
    it1 = tmp_path / "runs/r/it1"
    write(it1 / "generate.json", {"generate_prompts": 4, "shared": "from generate"})
    write(it1 / "pairs.json", {"pairs": 3, "shared": "from pairs"})  # sorted after generate.json: it wins
    write(it1 / "notes.txt", {"ignored": True})
    assert iteration_figures(it1) == {"generate_prompts": 4, "pairs": 3, "shared": "from pairs"}
    # Only the names asked for, in the order given; a missing one is skipped.
    assert iteration_figures(it1, ["pairs.json", "generate.json", "judge.json"]) == {
        "generate_prompts": 4, "pairs": 3, "shared": "from generate"}
    assert iteration_figures(tmp_path / "runs/r/it7") == {}


def test_collect_files_by_their_iteration_folder_and_keeps_empty_iterations(tmp_path):
    run = tmp_path / "runs/r"
    files = [write(run / "it0/metrics.json", {"accuracy": 0.25}),
             write(run / "it2/generate.json", {"generate_prompts": 8, "accuracy": 0.1}),
             write(run / "it2/metrics.json", {"accuracy": 0.5}),  # later on the command line: it wins
             str(run / "it1/metrics.json")]  # never written: skipped, the iteration stays empty
    report = collect(files, 2)
    assert report == {"it0": {"accuracy": 0.25}, "it1": {}, "it2": {"generate_prompts": 8, "accuracy": 0.5}}


def test_curves_keep_numeric_figures_only_in_iteration_order_every_record_with_the_same_keys():
    # DVC plots no record of a file whose records differ in their keys ("argument of type 'nonetype' is
    # not iterable"): a figure an iteration lacks is null there.
    report = {"it10": {"accuracy": 0.9}, "it2": {"accuracy": 0.5, "judge_mode": "expected", "stopped": True,
                                                 "pairs": 3, "note": None}, "it0": {}}
    assert curves(report) == [{"iteration": 0, "accuracy": None, "pairs": None},
                              {"iteration": 2, "accuracy": 0.5, "pairs": 3},
                              {"iteration": 10, "accuracy": 0.9, "pairs": None}]


def test_main_writes_the_report_and_its_curves_and_prints_the_last_evaluated_figure(tmp_path, capsys):
    run = tmp_path / "runs/r"
    files = [write(run / "it0/metrics.json", {"accuracy": 0.25, "mean_length": 12.0}),
             write(run / "it1/metrics.json", {"accuracy": 0.625}),
             write(run / "it1/pairs.json", {"pairs": 5, "pairs_rule": "gold"})]
    out = run / "metrics.json"
    main(["--params", "unused.yaml", "--run", "r", "--iteration", "1", "--out", str(out), *files])
    assert json.loads(out.read_text()) == {"it0": {"accuracy": 0.25, "mean_length": 12.0},
                                           "it1": {"accuracy": 0.625, "pairs": 5, "pairs_rule": "gold"}}
    assert json.loads((run / "curves.json").read_text()) == [
        {"iteration": 0, "accuracy": 0.25, "mean_length": 12.0, "pairs": None},
        {"iteration": 1, "accuracy": 0.625, "mean_length": None, "pairs": 5}]
    assert capsys.readouterr().out.strip() == "report: 1 iteration(s); last accuracy 0.625"


def test_main_headline_falls_back_to_the_judging_figure_then_to_none(tmp_path, capsys):
    run = tmp_path / "runs/j"
    files = [write(run / "it1/judge_eval.json", {"pairwise_accuracy": 0.875, "decoding_score": 0.5})]
    main(["--params", "p", "--run", "j", "--iteration", "1", "--out", str(run / "metrics.json"), *files])
    assert capsys.readouterr().out.strip() == "report: 1 iteration(s); last pairwise_accuracy 0.875"
    main(["--params", "p", "--run", "j", "--iteration", "2", "--out", str(run / "metrics.json"), *files])
    assert capsys.readouterr().out.strip() == "report: 2 iteration(s)"  # it2 has no metrics file
    assert json.loads((run / "metrics.json").read_text())["it2"] == {}
