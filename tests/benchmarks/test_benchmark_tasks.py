"""Benchmark tasks: shipped data with checksums, hub fallback, seeded disjoint splits, metrics."""

import json
import logging
import shutil

import dspy
import pytest

from benchmarks.harness import sandbox
from benchmarks.harness.real import tasks
from benchmarks.harness.real.tasks import DataIntegrityError, extract_code, humaneval_metric, load_task, parse_number


@pytest.fixture
def no_hub(monkeypatch):
    """Any attempt to reach the Hugging Face hub fails, as it does on an offline machine."""
    import datasets

    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("Couldn't reach 'https://huggingface.co' (offline)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    return calls


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch):
    """A copy of benchmarks/data that the loader reads instead of the real one (to tamper with)."""
    copy = tmp_path / "data"
    shutil.copytree(tasks.SHIPPED_DATA, copy)
    monkeypatch.setattr(tasks, "SHIPPED_DATA", copy)
    return copy


@pytest.mark.parametrize(("name", "distinct_problems"), [("multiarith", 580), ("gsm8k", 300)])
def test_math_tasks_load_offline_from_the_shipped_copy(name, distinct_problems, no_hub, monkeypatch):
    checked = []
    verify = tasks.verified_path
    monkeypatch.setattr(tasks, "verified_path", lambda relative: checked.append(relative) or verify(relative))
    task = load_task(name, n_train=5, n_val=5, n_test=5, seed=0)
    assert checked == [tasks.SOURCES[name].shipped] and not no_hub  # checksum verified; the hub never asked
    assert str(tasks.verified_path(checked[0])).startswith(str(tasks.ROOT))
    examples = task.trainset + task.valset + task.testset
    assert len(examples) == 15 and all(isinstance(e.answer, float) for e in examples)
    assert all(e.question.strip() == e.question and e.question for e in examples)
    with pytest.raises(ValueError, match=f"has {distinct_problems} examples"):
        load_task(name, n_train=distinct_problems, n_val=1)


def test_every_shipped_file_matches_the_manifest_and_has_a_licence():
    manifest = tasks.read_manifest(tasks.SHIPPED_DATA)
    for source in tasks.SOURCES.values():
        folder = source.shipped.split("/")[0]
        assert {source.shipped, f"{folder}/LICENSE"} <= set(manifest)
    for relative in manifest:
        assert tasks.verified_path(relative).is_file()


def test_a_tampered_data_file_is_refused_with_a_clear_error(shipped_copy):
    path = shipped_copy / "gsm8k" / "test_first300.jsonl"
    path.write_text(path.read_text(encoding="utf-8").replace("#### 18", "#### 19", 1), encoding="utf-8")
    with pytest.raises(DataIntegrityError, match=r"test_first300\.jsonl does not match its checksum.*git checkout"):
        load_task("gsm8k", n_train=1, n_val=1)
    load_task("multiarith", n_train=1, n_val=1)  # the other, untouched file still loads


def test_missing_manifest_or_unlisted_file_is_refused(shipped_copy):
    manifest = shipped_copy / "SHA256SUMS"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(line for line in lines if "MultiArith.json" not in line) + "\n")
    with pytest.raises(DataIntegrityError, match=r"MultiArith\.json is not listed"):
        load_task("multiarith", n_train=1, n_val=1)
    manifest.unlink()
    with pytest.raises(DataIntegrityError, match="no checksum manifest"):
        load_task("multiarith", n_train=1, n_val=1)


def test_splits_are_disjoint_and_repeatable_by_seed():
    def questions(task):
        return [[e.question for e in split] for split in (task.trainset, task.valset, task.testset)]

    first = questions(load_task("multiarith", n_train=30, n_val=30, n_test=100, seed=3))
    train, val, test = (set(split) for split in first)
    assert (len(train), len(val), len(test)) == (30, 30, 100)
    assert not (train & val or train & test or val & test)
    assert questions(load_task("multiarith", n_train=30, n_val=30, n_test=100, seed=3)) == first
    assert questions(load_task("multiarith", n_train=30, n_val=30, n_test=100, seed=4)) != first
    # the test split does not move with the train/val sizes, and train/val do not move with the test size
    assert questions(load_task("multiarith", n_train=5, n_val=50, n_test=100, seed=3))[2] == first[2]
    assert questions(load_task("multiarith", n_train=30, n_val=30, n_test=0, seed=3))[:2] == first[:2]


def test_repeated_inputs_never_land_in_two_splits():
    rows = [dspy.Example(question=q, answer=1.0).with_inputs("question") for q in ["a b", "A  b ", "c", "d"]]
    kept = tasks.distinct(rows)
    assert [e.question for e in kept] == ["a b", "c", "d"]
    train, val, test = tasks.split_examples(kept, 1, 1, 1, seed=0)
    assert len({e.question for e in train + val + test}) == 3
    with pytest.raises(ValueError, match=">= 0"):
        tasks.split_examples(kept, -1, 1)


def test_hub_falls_back_to_the_shipped_copy_with_a_log_line(no_hub, caplog):
    with caplog.at_level(logging.WARNING, logger="tasks"):
        task = load_task("gsm8k", n_train=2, n_val=2, hub=True)
    assert no_hub and no_hub[0][0] == "openai/gsm8k"  # it did try the hub
    assert len(task.trainset) == 2
    message = caplog.records[-1].getMessage()
    assert "could not load 'openai/gsm8k' from the Hugging Face hub" in message
    assert "using the copy shipped in" in message and "test_first300.jsonl" in message


def test_data_dir_overrides_the_shipped_copy(tmp_path, no_hub):
    with pytest.raises(FileNotFoundError, match=r"--data-dir.*shipped.*--hub"):
        load_task("multiarith", n_train=1, n_val=1, data_dir=str(tmp_path))
    (tmp_path / "multiarith").mkdir()
    rows = [{"sQuestion": f" What is {i} + 1? ", "lSolutions": [i + 1.0]} for i in range(4)]
    (tmp_path / "multiarith" / "MultiArith.json").write_text(json.dumps(rows))
    task = load_task("multiarith", n_train=2, n_val=2, data_dir=str(tmp_path))
    assert sorted(e.answer for e in task.trainset + task.valset) == [1.0, 2.0, 3.0, 4.0]


def test_reviews_task_ships_with_the_project():
    task = load_task("reviews", n_train=12, n_val=12, seed=0)
    assert len(task.trainset) == len(task.valset) == 12 and task.testset == []
    assert not {e.review for e in task.trainset} & {e.review for e in task.valset}
    example = task.trainset[0]
    assert set(example.inputs().keys()) == {"review"}
    assert task.metric(example, dspy.Prediction(sentiment=f" {example.sentiment.title()}.")) == 1.0
    assert task.metric(example, dspy.Prediction(sentiment="maybe")) == 0.0


def test_math_answers_are_read_as_numbers():
    assert parse_number("The answer is $1,234.50.") == pytest.approx(1234.5)
    assert parse_number(7) == 7.0 and parse_number("none") is None
    assert extract_code("text\n```python\ndef f():\n    return 1\n```\nmore") == "def f():\n    return 1\n"


def test_unknown_task_and_oversized_request():
    with pytest.raises(ValueError, match="unknown task"):
        load_task("imagenet", n_train=1, n_val=1)
    with pytest.raises(ValueError, match=r"has 40 examples; asked for 30 train \+ 30 val \+ 0 test"):
        load_task("reviews", n_train=30, n_val=30)


def test_humaneval_metric_executes_the_tests():
    if not sandbox.isolation().available:
        pytest.skip(f"no isolated sandbox here: {sandbox.isolation().reason}")
    task = load_task("humaneval", n_train=1, n_val=0, n_test=1, seed=0)
    example = task.trainset[0]
    good = humaneval_metric(example, dspy.Prediction(code=example.prompt + example.canonical_solution))
    assert good.score == 1.0
    body_only = humaneval_metric(example, dspy.Prediction(code=f"```python\n{example.canonical_solution}```"))
    assert body_only.score == 1.0  # a bare body is completed with the prompt
    bad = humaneval_metric(example, dspy.Prediction(code=example.prompt + "    return None\n"))
    assert bad.score == 0.0 and bad.feedback.startswith("the tests failed")
    exits = humaneval_metric(example, dspy.Prediction(code=example.prompt + "    return None\nimport sys\nsys.exit(0)"))
    assert exits.score == 0.0 and "SystemExit" in exits.feedback


def test_humaneval_refuses_to_load_without_isolation_unless_allowed(monkeypatch):
    monkeypatch.setattr(sandbox, "isolation", lambda: sandbox.Isolation(False, "namespaces refused (test)"))
    with pytest.raises(sandbox.SandboxUnavailableError, match=r"namespaces refused \(test\).*--allow-weak-sandbox"):
        load_task("humaneval", n_train=1, n_val=1)
    task = load_task("humaneval", n_train=1, n_val=1, allow_weak_sandbox=True)
    example = task.trainset[0]
    weak = task.metric(example, dspy.Prediction(code=example.prompt + example.canonical_solution))
    assert weak.score == 1.0
    with pytest.raises(sandbox.SandboxUnavailableError):
        humaneval_metric(example, dspy.Prediction(code=example.prompt + example.canonical_solution))
