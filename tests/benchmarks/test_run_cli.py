"""``python -m benchmarks run``: argument handling, the main job and the optimizer comparison, driven with the scripted
world (``--task simulated``: scripted student and teacher engines, not real models)."""

from __future__ import annotations

import csv
import io
import math
from contextlib import redirect_stdout
from pathlib import Path

import dspy
import pytest

from benchmarks import cli
from benchmarks.harness import metering, optimizers
from benchmarks.harness.metering import CallMeter
from benchmarks.harness.optimizers import plan
from benchmarks.harness.real import compare as real_compare
from benchmarks.harness.real import main_job, tasks
from benchmarks.harness.real import report as real_report
from benchmarks.harness.real import setup as run_setup
from benchmarks.harness.real.compare import ScoreCache, accuracy_ci, bootstrap_interval, compare, wilson_interval
from benchmarks.harness.real.setup import Setup
from dspy_concept_distill.testing import SimulatedTask
from dspy_concept_distill.testing.scripted import Prompt, ScriptedEngine, format_reply


def parse_args(argv: list[str]):
    return cli.parse_args(["run", *argv])


def run_main(argv: list[str]) -> tuple[int, str]:
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = cli.main(["run", *argv])
    return code, buffer.getvalue()


def read_csv(path: Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    meta = dict(line[2:].split(": ", 1) for line in lines if line.startswith("# "))
    rows = list(csv.DictReader([line for line in lines if not line.startswith("# ")]))
    return meta, rows


# -- arguments ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["--budget-matched", "50"],                                            # budget without a comparison
    ["--optimizers", "baseline,cd-light"],                                 # a comparison without a test split
    ["--optimizers", "baseline,nonsense", "--n-test", "10"],               # unknown optimizer
    ["--optimizers", "cd-light,cd-light", "--n-test", "10"],               # listed twice
    ["--n-test", "-1"],                                                    # negative size
    ["--optimizers", "cd-light", "--n-test", "5", "--budget-matched", "0"],
    ["--task", "simulated", "--optimizers", "baseline,copro", "--n-test", "5"],  # no scripted proposer for COPRO
])
def test_bad_arguments_stop_before_any_work(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args(argv)
    assert stop.value.code == 2


def test_defaults_are_the_main_job():
    args = parse_args([])
    assert (args.task, args.student, args.teacher, args.optimizers, args.n_test) == ("reviews", "local", "local",
                                                                                     None, 0)
    assert args.allow_weak_sandbox is False


def test_data_dir_help_names_the_shipped_copy_and_the_published_file_names(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "gsm8k/test.jsonl" in text and "shipped" in text
    assert "gsm8k/train.jsonl" not in text


def test_sizes_sandbox_flag_and_data_options_reach_load_task(monkeypatch):
    seen = {}

    def fake_load_task(name, **kwargs):
        seen.update(kwargs, name=name)
        return tasks.Task(name, [], [], lambda: dspy.Predict("a -> b"), lambda e, p, t=None: 1.0, "fake", [])

    monkeypatch.setattr(tasks, "load_task", fake_load_task)
    monkeypatch.setattr(run_setup, "make_lm", lambda spec, **kw: dspy.LM(f"openai/{spec}-{kw.get('name')}"))
    args = parse_args(["--task", "humaneval", "--allow-weak-sandbox", "--n-train", "3", "--n-val", "6",
                           "--n-test", "7", "--seed", "4", "--data-dir", "/data", "--student", "x",
                           "--teacher", "y"])
    run_setup.build(args)
    assert seen == {"name": "humaneval", "n_train": 3, "n_val": 6, "n_test": 7, "seed": 4, "data_dir": "/data",
                    "hub": False, "allow_weak_sandbox": True}


def test_a_teacher_that_is_the_student_model_gets_its_own_model_string(monkeypatch):
    monkeypatch.setattr(tasks, "load_task", lambda name, **kw: tasks.Task(
        name, [], [], lambda: dspy.Predict("a -> b"), lambda e, p, t=None: 1.0, "fake", []))
    names = []
    monkeypatch.setattr(run_setup, "make_lm", lambda spec, **kw: names.append(kw.get("name")) or dspy.LM("openai/x"))
    run_setup.build(parse_args(["--task", "reviews"]))
    assert names[0] is None and names[1] and "teacher" in names[1]


# -- confidence intervals ------------------------------------------------------------------------------------------
def test_wilson_interval_matches_the_textbook_values():
    low, high = wilson_interval(10, 20)
    assert math.isclose(low, 0.2993, abs_tol=1e-4) and math.isclose(high, 0.7007, abs_tol=1e-4)
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and math.isclose(high, 0.1611, abs_tol=1e-4)


def test_an_interval_always_holds_its_own_estimate_and_the_plot_takes_it(tmp_path):
    pytest.importorskip("matplotlib")
    plot = real_report.plot

    for successes, n in [(0, 24), (24, 24), (4, 24), (1, 3)]:
        low, high = wilson_interval(successes, n)
        assert 0.0 <= low <= successes / n <= high <= 1.0
    rows = [real_compare.Row("t", "a", "s", test_score=0.0, ci_low=1e-17, ci_high=0.1, student_calls=3),
            real_compare.Row("t", "b", "s", test_score=0.5, ci_low=0.3, ci_high=0.7, student_calls=9)]
    assert plot(rows, tmp_path / "p.png", {"command": "c", "revision": "r", "date": "d"}, title="t")
    assert (tmp_path / "p.png").stat().st_size > 0


def test_accuracy_ci_uses_wilson_for_0_1_scores_and_bootstrap_otherwise():
    assert accuracy_ci([1.0, 0.0, 1.0, 1.0])[3] == "wilson"
    mean, low, high, method = accuracy_ci([0.5, 0.25, 1.0, 0.75])
    assert method == "bootstrap" and low <= mean <= high and (low, high) == bootstrap_interval([0.5, 0.25, 1.0, 0.75])


# -- counting calls at the LM ---------------------------------------------------------------------------------------
def test_call_meter_counts_every_request_of_an_lm_and_its_copies_as_the_engine_sees_them():
    metering.disable_caches()
    sim = SimulatedTask.create(6, 6, seed=1)
    student = sim.world.student_lm()
    meter = CallMeter()
    meter.attach("student", student)
    program = dspy.Predict("question -> answer: float")
    with dspy.context(lm=student), meter.tracking():
        for example in sim.trainset[:3]:
            program(**example.inputs())
        with dspy.context(lm=student.copy(rollout_id=1, temperature=1.0)):
            program(**sim.trainset[3].inputs())
    usage = meter.usage("student")
    assert usage.calls == student.engine.calls == 4
    assert usage.input_tokens > 0 and usage.output_tokens > 0


def test_a_program_with_the_same_instructions_is_scored_once():
    metering.disable_caches()
    sim = SimulatedTask.create(6, 6, seed=1)
    student = sim.world.student_lm()
    cache = ScoreCache(sim.world.metric, num_threads=2)
    with dspy.context(lm=student):
        first = cache.scores(dspy.Predict("question -> answer: float"), "val", sim.valset)
        again = cache.scores(dspy.Predict("question -> answer: float"), "val", sim.valset)
        other = dspy.Predict(dspy.Signature("question -> answer: float", "Different instructions."))
        cache.scores(other, "val", sim.valset)
    assert first == again and len(first) == 6
    assert student.engine.calls == 12


# -- the main job --------------------------------------------------------------------------------------------------
def test_main_job_on_the_simulated_world_writes_rules_report_and_program(tmp_path):
    code, out = run_main(["--task", "simulated", "--out", str(tmp_path), "--n-train", "10", "--n-val", "10"])
    assert code == 0
    assert "accepted rules" in out and "valset score" in out
    for name in ("rules.json", "rules.md", "report.csv", "report.html", "result.json", "program.json"):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "shipped_rules").exists()  # no rules ship with the simulated task


def test_main_job_races_the_rules_shipped_with_the_task_through_verify(tmp_path, monkeypatch):
    sim = SimulatedTask.create(10, 10, seed=0)
    helpful = sim.world.helpful_rules[0]
    monkeypatch.setitem(main_job.SHIPPED_RULES, "simulated", [helpful, "Always answer with the number seven."])
    code, out = run_main(["--task", "simulated", "--out", str(tmp_path), "--n-train", "10", "--n-val", "10"])
    assert code == 0
    assert "Racing 2 candidate rule(s) shipped with the task" in out
    verified = out.split("Racing 2 candidate rule(s)", 1)[1]
    assert helpful in verified.split("rejected rules", 1)[0]  # kept, with its gain
    assert "Always answer with the number seven." in verified.split("rejected rules", 1)[1]
    assert (tmp_path / "shipped_rules" / "rules.json").is_file()


# -- the comparison ------------------------------------------------------------------------------------------------
def test_comparison_writes_csv_markdown_and_plot_with_command_revision_and_counted_calls(tmp_path):
    argv = ["--task", "simulated", "--optimizers", "baseline,cd-light", "--n-train", "10", "--n-val", "10",
            "--n-test", "12", "--out", str(tmp_path), "--log-dir", str(tmp_path / "logs")]
    code, out = run_main(argv)
    assert code == 0
    assert "[simulated] cd-light: test " in out and "real_simulated.md" in out
    meta, rows = read_csv(tmp_path / "real_simulated.csv")
    assert meta["command"] == "python -m benchmarks run " + " ".join(argv)
    assert meta["revision"] and meta["revision"] != "unknown"
    by_name = {r["optimizer"]: r for r in rows}
    assert list(by_name) == ["baseline", "cd-light"]
    assert by_name["baseline"]["student_calls"] == "0" and by_name["baseline"]["teacher_calls"] == "0"
    cd = by_name["cd-light"]
    assert int(cd["student_calls"]) > 0 and cd["student_calls"] == cd["ledger_student_calls"]
    assert int(cd["teacher_calls"]) > 0 and cd["teacher_calls"] == cd["ledger_teacher_calls"]
    for row in rows:
        assert float(row["ci_low"]) <= float(row["test_score"]) <= float(row["ci_high"])
        assert row["ci_method"] == "wilson" and row["n_test"] == "12"
    assert float(cd["test_score"]) > float(by_name["baseline"]["test_score"])  # the scripted concepts help
    markdown = (tmp_path / "real_simulated.md").read_text(encoding="utf-8")
    assert meta["revision"] in markdown and "--optimizers baseline,cd-light" in markdown
    assert "| cd-light |" in markdown
    _, parsed = real_report.read_csv(tmp_path / "real_simulated.csv")  # the CSV reads back into rows
    assert [r.student_calls for r in parsed] == [int(r["student_calls"]) for r in rows]
    assert parsed[0].ledger_student_calls is None and parsed[1].test_score == float(cd["test_score"])
    pytest.importorskip("matplotlib")
    png = tmp_path / "real_simulated.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    png.unlink()
    assert cli.main(["plot", str(tmp_path / "real_simulated.csv")]) == 0  # redrawn from the CSV alone
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_budget_matched_comparison_holds_concept_distillation_to_the_budget(tmp_path):
    # 35 calls: the trainset and the valset baseline take 20, the rest races (a budget that races nothing, such as
    # 20, makes ConceptDistillation raise BudgetTooSmallError, recorded as that optimizer's failure)
    code, _ = run_main(["--task", "simulated", "--optimizers", "cd-light,cd-medium", "--n-train", "10",
                        "--n-val", "10", "--n-test", "5", "--budget-matched", "35", "--out", str(tmp_path),
                        "--log-dir", str(tmp_path)])
    assert code == 0
    meta, rows = read_csv(tmp_path / "real_simulated.csv")
    assert meta["budget"].startswith("35 student calls")
    for row in rows:
        assert 0 < int(row["student_calls"]) <= 35
        assert "max_student_calls=35" in row["settings"]


def test_the_test_split_is_disjoint_from_train_and_validation():
    setup = run_setup.build(parse_args(["--task", "simulated", "--n-test", "15"]))
    questions = [{ex.question for ex in split} for split in (setup.trainset, setup.valset, setup.testset)]
    assert len(questions[2]) == 15
    assert not questions[2] & (questions[0] | questions[1])


def test_an_optimizer_that_fails_is_recorded_and_the_others_still_run(monkeypatch):
    real = real_compare.compile_with

    def failing(chosen, inputs):
        if chosen.key == "cd-light":
            raise RuntimeError("the teacher went away")
        return real(chosen, inputs)

    monkeypatch.setattr(real_compare, "compile_with", failing)
    rows = compare(_simulated_setup(), ["cd-light", "baseline"], budget=None, seed=0, num_threads=2,
                   echo=lambda _: None)
    assert [r.status for r in rows] == ["error", "ok"]
    assert "the teacher went away" in rows[0].error and rows[0].test_score is None
    assert rows[1].test_score is not None


# -- DSPy's optimizers in the loop (scripted LMs) ------------------------------------------------------------------
class AnyInstructionEngine(ScriptedEngine):
    """Scripted instruction writer (not a real model): any signature's text fields get one fixed instruction; a
    plain prompt (GEPA's reflection) gets it in a fenced block."""

    model = "scripted-proposer"
    TEXT = "Read the question and reply with the final number."

    def reply(self, prompt: Prompt, index: int) -> str:
        outputs = prompt.outputs()
        if not outputs:
            return f"```\n{self.TEXT}\n```"
        return format_reply({o.name: self.TEXT for o in outputs}, json_mode=prompt.json_mode)


def _simulated_setup(n: int = 8, teacher: dspy.LM | None = None) -> Setup:
    sim = SimulatedTask.create(n, n, seed=2)
    return Setup("simulated", "scripted", sim.trainset, sim.valset, sim.world.split(6, 0)[0],
                 lambda: dspy.Predict("question -> answer: float"), sim.world.metric, sim.world.student_lm(),
                 teacher or sim.world.teacher_lm(), dspy.ChatAdapter())


@pytest.mark.parametrize("key", ["copro", "miprov2", "gepa", "simba", "infer-rules"])
def test_each_dspy_optimizer_runs_budget_matched_and_its_calls_are_counted_at_the_lm(key, tmp_path):
    if key == "miprov2":
        pytest.importorskip("optuna", reason='MIPROv2 needs optuna (pip install -e ".[bench]")')
    teacher = dspy.LM("scripted/proposer", engine=AnyInstructionEngine())
    setup = _simulated_setup(teacher=teacher)
    [row] = compare(setup, [key], budget=40, seed=0, num_threads=2, log_dir=tmp_path, echo=lambda _: None)
    assert row.status == "ok", (row.error, (tmp_path / f"simulated_{key}.log").read_text())
    scoring = setup.student.engine.calls - row.student_calls  # valset + test scoring of the returned program
    assert row.student_calls > 0 and scoring in (0, len(setup.valset) + len(setup.testset))
    assert row.teacher_calls == teacher.engine.calls
    # SIMBA asks for a rule only where samples of one example differ; the scripted student never varies
    assert row.teacher_calls > 0 or key == "simba"
    assert row.student_calls <= 3 * 40  # settings chosen near the budget, not the optimizer's defaults
    # tokens of calls made in DSPy's worker threads (which get a deep copy of the usage tracker) are kept
    assert row.student_input_tokens > 0 and row.student_output_tokens > 0


def test_budget_plans_come_near_the_budget_and_defaults_do_not_depend_on_it():
    for key in ("copro", "miprov2", "simba", "infer-rules"):
        chosen = plan(key, budget=100, n_train=20, n_val=20)
        assert 50 <= chosen.planned_calls <= 150, (key, chosen)
        assert plan(key, budget=None, n_train=20, n_val=20) != chosen
    assert plan("gepa", budget=200, n_train=20, n_val=20).init == {"max_metric_calls": 200}
    assert plan("cd-medium", budget=200, n_train=20, n_val=20).init == {"auto": "medium", "max_student_calls": 200}
    assert plan("miprov2", budget=None, n_train=20, n_val=20).init["auto"] == "light"
    with pytest.raises(ValueError, match="unknown optimizer"):
        plan("bootstrap", budget=None, n_train=20, n_val=20)
    assert set(optimizers.OPTIMIZER_KEYS) >= {"baseline", "cd-light", "cd-medium", "copro", "miprov2", "gepa",
                                                   "simba", "infer-rules"}
