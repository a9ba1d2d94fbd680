"""MLflow tracking of a finished compile (optional: ``pip install "dspy-concept-distill[mlflow]"``).

``log_to_mlflow`` logs into the caller's MLflow run when one is active, or into a run of its own when DSPy
autologging is on (``mlflow.dspy.autolog()``) and none is active: the parameters, the per-round metrics, the score
trajectory, and the rule set (JSON and Markdown), the HTML report and the result data as artifacts. It logs once,
at the end of a compile: no run per racing chunk or phase, no child runs.

It never imports mlflow: an active run or autologging needs the caller to have imported it already, so it looks
for ``mlflow`` in ``sys.modules`` (this also spares every compile the seconds an mlflow import takes). A tracking
error never fails the compile: it is logged as a warning.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable, Mapping
from typing import Any

from .view import ResultView

logger = logging.getLogger(__name__)

ARTIFACT_DIR = "concept_distillation"
RUN_NAME = "concept-distillation"
MAX_PARAM_CHARS = 500  # the smallest limit across MLflow versions
ROUND_METRICS = ("train_score", "mistakes", "candidates", "accepted", "val_score_before", "val_score_after")


def log_to_mlflow(result: ResultView, *, params: Mapping[str, Any] | None = None,
                  prefix: str = "") -> str | None:
    """Log ``result`` to MLflow; return the id of the run logged to, or None when nothing was logged (mlflow not
    imported, or no active run and DSPy autologging off, or a tracking error).

    ``params`` are the optimizer's settings (name -> value, logged as strings); ``prefix`` is put before every
    parameter, metric and artifact name, e.g. to log two compiles into one run.
    """
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return None
    try:
        run = mlflow.active_run()
        own = run is None and _dspy_autolog_on()
        if run is None and not own:
            return None
        if own:
            run = mlflow.start_run(run_name=RUN_NAME)
        try:
            for what, step in (("parameters", _log_params), ("metrics", _log_metrics), ("artifacts", _log_artifacts)):
                def log(step: Callable[[Any, ResultView, dict[str, Any], str], None] = step) -> None:
                    step(mlflow, result, dict(params or {}), prefix)

                _attempt(what, log)
        finally:
            if own:
                mlflow.end_run()
        return run.info.run_id
    except Exception as exc:
        logger.warning("could not log the compile to MLflow (the optimized program is not affected): %s", exc)
        return None


def _dspy_autolog_on() -> bool:
    """Whether ``mlflow.dspy.autolog()`` (or ``mlflow.autolog()``) is on, and not disabled since."""
    try:
        from mlflow.utils.autologging_utils import autologging_is_disabled
    except ImportError:
        return False
    return not autologging_is_disabled("dspy")


def _attempt(what: str, action: Callable[[], None]) -> None:
    try:
        action()
    except Exception as exc:
        logger.warning("could not log the %s of the compile to MLflow: %s", what, exc)


def _log_params(mlflow: Any, result: ResultView, params: dict[str, Any], prefix: str) -> None:
    values: dict[str, Any] = {**params, "trainset_size": result.trainset_size, "valset_size": result.valset_size,
                              "min_gain": result.min_gain}
    values.update({f"budget_{k}": v for k, v in (result.budgets or {}).items()})
    for role in ("student", "teacher"):
        models = sorted({row.model for row in result.usage.rows() if row.role == role})
        if models:
            values[f"{role}_model"] = ", ".join(models)
    mlflow.log_params({f"{prefix}{k}": _param(v) for k, v in values.items()})


def _param(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 1] + "…"


def _finite(values: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def summary_metrics(result: ResultView) -> dict[str, float]:
    """The run's totals: scores, rule counts, calls, cache hits, tokens and USD (where priced)."""
    totals = result.usage.totals()
    costs = [t["cost"] for t in totals.values() if t["cost"] is not None]
    change = None
    if result.baseline_score is not None and result.final_score is not None:
        change = result.final_score - result.baseline_score
    values: dict[str, Any] = {
        "baseline_score": result.baseline_score, "final_score": result.final_score, "score_change": change,
        "rules_kept": len(result.ruleset), "rules_proposed": len(result.rules),
        "rules_rejected": len(result.rejected_rules), "mistakes": len(result.mistakes),
        "tokens": sum(t["input_tokens"] + t["output_tokens"] for t in totals.values()),
        "cost_usd": sum(costs) if costs else None,
        "cost_estimate_low_usd": (result.cost_estimate or {}).get("low"),
        "cost_estimate_high_usd": (result.cost_estimate or {}).get("high"),
    }
    for role, total in totals.items():
        values[f"{role}_calls"], values[f"{role}_cache_hits"] = total["calls"], total["cache_hits"]
    return _finite(values)


def _log_metrics(mlflow: Any, result: ResultView, _params: dict[str, Any], prefix: str) -> None:
    mlflow.log_metrics({f"{prefix}{k}": v for k, v in summary_metrics(result).items()})
    for summary in result.rounds:  # RoundSummary.round counts from 1, as the logs do
        values = _finite({f"{prefix}round_{name}": getattr(summary, name) for name in ROUND_METRICS})
        if values:
            mlflow.log_metrics(values, step=int(summary.round))
    for step in result.trajectory:  # step k: the valset score with the first k kept rules (0: the baseline)
        low, high = step.ci or (None, None)
        values = _finite({f"{prefix}trajectory_score": step.score, f"{prefix}trajectory_gain": step.gain,
                          f"{prefix}trajectory_gain_ci_low": low, f"{prefix}trajectory_gain_ci_high": high})
        if values:
            mlflow.log_metrics(values, step=step.rules)
    tags = {f"{prefix}{ARTIFACT_DIR}.stopped": result.stopped,
            f"{prefix}{ARTIFACT_DIR}.nothing_learned": result.why_nothing_learned()}
    tags = {k: _param(v) for k, v in tags.items() if v}
    if tags:
        mlflow.set_tags(tags)


def _log_artifacts(mlflow: Any, result: ResultView, _params: dict[str, Any], prefix: str) -> None:
    folder = f"{prefix}{ARTIFACT_DIR}"
    mlflow.log_text(result.ruleset.to_json(), f"{folder}/rules.json")
    mlflow.log_text(result.ruleset.to_markdown(), f"{folder}/rules.md")
    mlflow.log_text(result.to_html(), f"{folder}/report.html")
    data = json.dumps(result.to_dict(), indent=2, default=str, ensure_ascii=False)
    mlflow.log_text(data, f"{folder}/result.json")
