"""Benchmark tasks and the sandbox that runs model-written code."""

import dspy
import pytest
import sandbox
from tasks import DEFAULT_DATA_DIR, extract_code, humaneval_metric, load_task, parse_number


def test_sandbox_runs_code_and_reports_failures():
    assert sandbox.run_python("print(6 * 7)").stdout.strip() == "42"
    failed = sandbox.run_python("assert 1 == 2, 'nope'")
    assert not failed.passed and "AssertionError: nope" in failed.error


def test_sandbox_stops_runaway_code():
    assert sandbox.run_python("while True:\n    pass", timeout=3).timed_out
    hungry = sandbox.run_python("x = bytearray(4 << 30)")
    assert not hungry.passed and "MemoryError" in hungry.error


def test_sandbox_has_an_empty_environment_and_its_own_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "do-not-leak")
    result = sandbox.run_python("import os; print(os.environ.get('SECRET_TOKEN')); print(os.getcwd())")
    token, cwd = result.stdout.split()
    assert token == "None" and "cd-sandbox-" in cwd


def test_sandbox_has_no_network_where_the_kernel_allows_isolation():
    if not sandbox.network_isolated():
        pytest.skip("no network namespaces here (unshare unavailable)")
    result = sandbox.run_python(
        "import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=2)")
    assert not result.passed and ("Network is unreachable" in result.error or "refused" in result.error)


def test_humaneval_metric_executes_the_tests():
    task = load_task("humaneval", n_train=1, n_val=0, seed=0)
    example = task.trainset[0]
    good = humaneval_metric(example, dspy.Prediction(code=example.prompt + example.canonical_solution))
    assert good.score == 1.0
    body_only = humaneval_metric(example, dspy.Prediction(code=f"```python\n{example.canonical_solution}```"))
    assert body_only.score == 1.0  # a bare body is completed with the prompt
    bad = humaneval_metric(example, dspy.Prediction(code=example.prompt + "    return None\n"))
    assert bad.score == 0.0 and bad.feedback.startswith("the tests failed")


def test_reviews_task_ships_with_the_project():
    task = load_task("reviews", n_train=12, n_val=12, seed=0)
    assert len(task.trainset) == len(task.valset) == 12
    assert not {e.review for e in task.trainset} & {e.review for e in task.valset}
    example = task.trainset[0]
    assert set(example.inputs().keys()) == {"review"}
    assert task.metric(example, dspy.Prediction(sentiment=f" {example.sentiment.title()}.")) == 1.0
    assert task.metric(example, dspy.Prediction(sentiment="maybe")) == 0.0


def test_math_answers_are_read_as_numbers():
    assert parse_number("The answer is $1,234.50.") == pytest.approx(1234.5)
    assert parse_number(7) == 7.0 and parse_number("none") is None
    assert extract_code("text\n```python\ndef f():\n    return 1\n```\nmore") == "def f():\n    return 1\n"


@pytest.mark.skipif(not (DEFAULT_DATA_DIR / "multiarith" / "MultiArith.json").exists(),
                    reason="needs ../shared/data (the benchmark files next to the repository)")
@pytest.mark.parametrize("name", ["multiarith", "gsm8k"])
def test_math_tasks_load_from_local_files(name):
    task = load_task(name, n_train=5, n_val=5, seed=0)
    assert len(task.trainset) == 5 and all(isinstance(e.answer, float) for e in task.trainset)
    assert all(e.question.strip() == e.question and e.question for e in task.valset)


def test_missing_local_data_names_both_ways_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--data-dir.*--hub"):
        load_task("multiarith", n_train=1, n_val=1, data_dir=str(tmp_path))


def test_offline_hub_failure_names_the_local_option(monkeypatch):
    import datasets
    import huggingface_hub

    # the hub is unreachable here either way; offline mode makes datasets say so at once instead of retrying
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match="offline, use the local files instead: --data-dir"):
        load_task("gsm8k", n_train=1, n_val=1, hub=True)


def test_unknown_task_and_oversized_request():
    with pytest.raises(ValueError, match="unknown task"):
        load_task("imagenet", n_train=1, n_val=1)
    with pytest.raises(ValueError, match="has 40 examples"):
        load_task("reviews", n_train=30, n_val=30)
