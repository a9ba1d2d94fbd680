"""MLflow tracking against a local file store: what is logged into an active run or an autologged one, that a
compile is one run (no child runs), that nothing happens without a run, and that a tracking error never fails
the compile. Skipped when mlflow is not installed (``pip install -e ".[mlflow]"``), except the test that mlflow
is never imported."""

from __future__ import annotations

import json
import logging
import os
import sys

import dspy
import pytest

from dspy_concept_distill import ConceptDistillation, RuleSet
from dspy_concept_distill.reporting.mlflow import ARTIFACT_DIR, log_to_mlflow
from tests.reporting.results import make_result

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # offline: no usage pings from MLflow 3


@pytest.fixture
def mlflow(tmp_path, monkeypatch):
    """mlflow with a fresh local file store and experiment; autologging off and no run left active afterwards."""
    mlflow = pytest.importorskip("mlflow", exc_type=ImportError)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses file stores without it
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"file://{tmp_path}/mlruns")
    experiment = mlflow.create_experiment("cd-test", artifact_location=f"file://{tmp_path}/artifacts")
    mlflow.set_experiment(experiment_id=experiment)
    yield mlflow
    while mlflow.active_run() is not None:
        mlflow.end_run()
    try:
        import mlflow.dspy

        mlflow.dspy.autolog(disable=True)
    except ImportError:
        pass
    mlflow.set_tracking_uri(previous)


def _runs(mlflow):
    experiment = mlflow.get_experiment_by_name("cd-test")
    return mlflow.MlflowClient().search_runs([experiment.experiment_id])


def _history(mlflow, run_id, key):
    return [(m.step, m.value) for m in sorted(mlflow.MlflowClient().get_metric_history(run_id, key),
                                              key=lambda m: m.step)]


def _artifact(mlflow, run_id, name, tmp_path):
    path = mlflow.MlflowClient().download_artifacts(run_id, f"{ARTIFACT_DIR}/{name}", str(tmp_path / "dl"))
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def test_logs_parameters_metrics_and_artifacts_into_the_active_run(mlflow, tmp_path):
    result = make_result()
    with mlflow.start_run() as run:
        logged = log_to_mlflow(result, params={"auto": "light", "seed": 0, "rounds": None})
    assert logged == run.info.run_id and len(_runs(mlflow)) == 1
    data = mlflow.MlflowClient().get_run(logged).data
    assert {"auto": "light", "seed": "0", "rounds": "None", "valset_size": "20", "budget_student_calls": "100",
            "student_model": "openai/gpt-4o-mini", "teacher_model": "openai/gpt-4o"}.items() <= data.params.items()
    assert data.metrics["final_score"] == pytest.approx(0.8) and data.metrics["rules_kept"] == 2
    assert data.metrics["student_calls"] == 3 and data.metrics["student_cache_hits"] == 1
    assert data.metrics["cost_usd"] > 0
    assert _history(mlflow, logged, "round_train_score") == [(1, 0.4), (2, 0.6)]  # rounds from 1
    assert _history(mlflow, logged, "round_accepted") == [(1, 1.0), (2, 1.0)]
    assert _history(mlflow, logged, "trajectory_score") == [(0, 0.5), (1, 0.7), (2, 0.8)]
    assert _history(mlflow, logged, "trajectory_gain_ci_low") == [(1, 0.05), (2, -0.02)]
    names = {f.path for f in mlflow.MlflowClient().list_artifacts(logged, ARTIFACT_DIR)}
    assert names == {f"{ARTIFACT_DIR}/{n}" for n in ("rules.json", "rules.md", "report.html", "result.json")}
    assert RuleSet.from_json(_artifact(mlflow, logged, "rules.json", tmp_path)) == result.ruleset
    assert RuleSet.from_markdown(_artifact(mlflow, logged, "rules.md", tmp_path)) == result.ruleset
    assert _artifact(mlflow, logged, "report.html", tmp_path) == result.to_html()
    assert json.loads(_artifact(mlflow, logged, "result.json", tmp_path))["final_score"] == 0.8


def test_a_prefix_keeps_two_compiles_apart_in_one_run(mlflow):
    with mlflow.start_run() as run:
        log_to_mlflow(make_result(), params={"seed": 0}, prefix="a.")
        log_to_mlflow(make_result(final_score=0.6), params={"seed": 1}, prefix="b.")
    data = mlflow.MlflowClient().get_run(run.info.run_id).data
    assert data.params["a.seed"] == "0" and data.params["b.seed"] == "1"
    assert data.metrics["a.final_score"] == pytest.approx(0.8) and data.metrics["b.final_score"] == pytest.approx(0.6)


def test_nothing_is_logged_without_an_active_run_or_autologging(mlflow):
    assert mlflow.active_run() is None
    assert log_to_mlflow(make_result(), params={"seed": 0}) is None
    assert _runs(mlflow) == []


def test_autologging_without_an_active_run_gets_one_finished_run(mlflow):
    import mlflow.dspy

    mlflow.dspy.autolog(log_traces=False)
    run_id = log_to_mlflow(make_result(), params={"seed": 0})
    assert run_id is not None and mlflow.active_run() is None  # its own run, ended again
    runs = _runs(mlflow)
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["final_score"] == pytest.approx(0.8)
    mlflow.dspy.autolog(disable=True)
    assert log_to_mlflow(make_result()) is None  # off again: nothing


def test_a_tracking_error_is_a_warning_and_the_rest_is_still_logged(mlflow, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("tracking server is down")

    monkeypatch.setattr(mlflow, "log_metrics", broken)
    with caplog.at_level(logging.WARNING, logger="dspy_concept_distill.tracking"), mlflow.start_run() as run:
        assert log_to_mlflow(make_result(), params={"seed": 0}) == run.info.run_id
    assert "could not log the metrics" in caplog.text and "tracking server is down" in caplog.text
    data = mlflow.MlflowClient().get_run(run.info.run_id).data
    assert data.params["seed"] == "0" and data.metrics == {}
    assert mlflow.MlflowClient().list_artifacts(run.info.run_id, ARTIFACT_DIR)

    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING, logger="dspy_concept_distill.tracking"):
        patch.setattr(mlflow, "active_run", broken)
        assert log_to_mlflow(make_result()) is None
    assert "could not log the compile to MLflow" in caplog.text


def _compile(world):
    train, val = world.split(20, 20)
    dspy.configure(lm=world.student_lm())
    return ConceptDistillation(metric=world.metric, teacher_lm=world.teacher_lm(), num_threads=4, seed=3).compile(
        dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val).distillation


def test_a_compile_inside_a_run_logs_into_it_and_creates_no_other_run(mlflow, world):
    with mlflow.start_run() as run:
        result = _compile(world)
    runs = _runs(mlflow)
    assert [r.info.run_id for r in runs] == [run.info.run_id]
    data = runs[0].data
    assert data.params["seed"] == "3" and data.params["auto"] == "light"
    assert data.metrics["final_score"] == pytest.approx(result.final_score)
    assert data.metrics["rules_kept"] == len(result.ruleset) >= 1
    assert len(_history(mlflow, run.info.run_id, "trajectory_score")) == len(result.trajectory)


def test_an_autologged_compile_is_one_run_without_child_runs(mlflow, world):
    import mlflow.dspy

    mlflow.dspy.autolog(log_compiles=True, log_evals=True, log_traces=False)
    result = _compile(world)
    runs = _runs(mlflow)
    assert len(runs) == 1, [r.data.tags.get("mlflow.parentRunId") for r in runs]
    assert runs[0].data.metrics["final_score"] == pytest.approx(result.final_score)
    names = {f.path for f in mlflow.MlflowClient().list_artifacts(runs[0].info.run_id, ARTIFACT_DIR)}
    assert f"{ARTIFACT_DIR}/report.html" in names


def test_mlflow_is_never_imported_by_the_optimizer(monkeypatch):
    """Works with or without mlflow installed: when the caller did not import mlflow, nothing imports it."""
    monkeypatch.delitem(sys.modules, "mlflow", raising=False)
    assert log_to_mlflow(make_result(), params={"seed": 0}) is None
    assert "mlflow" not in sys.modules
