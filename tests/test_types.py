"""The package type-checks: ``mypy dspy_concept_distill`` with the settings of pyproject.toml's ``[tool.mypy]``
reports nothing (the package ships ``py.typed``, so its annotations are part of what users get). About 50 s
without a cache, a few seconds with the repository's ``.mypy_cache``."""

from __future__ import annotations

import mypy.api

from tests.helpers import REPO


def test_mypy_reports_no_error_in_the_package():
    report, errors, status = mypy.api.run([
        "--config-file", str(REPO / "pyproject.toml"), "--cache-dir", str(REPO / ".mypy_cache"),
        str(REPO / "dspy_concept_distill"),
    ])
    assert status == 0, f"mypy dspy_concept_distill found type errors:\n{report}{errors}"
