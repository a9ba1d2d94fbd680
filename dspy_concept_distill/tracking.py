"""MLflow tracking of a finished compile (optional: ``pip install "dspy-concept-distill[mlflow]"``): the public face
of ``reporting.mlflow``. ``log_to_mlflow`` logs a ``DistillationResult`` into the caller's MLflow run (or one of its
own when DSPy autologging is on); a compile calls it at its end."""

from .reporting.mlflow import ARTIFACT_DIR, log_to_mlflow, summary_metrics

__all__ = ["ARTIFACT_DIR", "log_to_mlflow", "summary_metrics"]
