"""The documentation site builds with ``mkdocs build --strict``: a broken link or anchor between pages, a page
left out of the navigation, a missing README snippet, or an API name that no longer exists fails this test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO


def _docs_tools_missing() -> str | None:
    for name in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        try:
            __import__(name)
        except ImportError:
            return name
    return None


def test_docs_build_strict(tmp_path: Path) -> None:
    missing = _docs_tools_missing()
    if missing:
        # CI installs [dev], which has the docs tools: there a missing one is a failure, not a silent skip.
        message = f"{missing} is not installed; the docs tools are in the [docs] and [dev] extras"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": pythonpath}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    for page in ("index.html", "getting-started/index.html", "api/optimizer/index.html", "api/lms/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    api = (tmp_path / "site" / "api" / "optimizer" / "index.html").read_text()
    assert 'id="dspy_concept_distill.ConceptDistillation.compile"' in api  # the API page rendered the docstrings
    started = re.sub(r"<[^>]+>", "", (tmp_path / "site" / "getting-started" / "index.html").read_text())
    assert "python -m pytest" in started  # the README's test command, included as a snippet


def _preset_table(fields: list[str]) -> str:
    from dspy_concept_distill.settings import PRESETS

    def cell(value: object) -> str:
        return ("yes" if value else "no") if isinstance(value, bool) else f"{value:g}"

    lines = ["| preset | " + " | ".join(f"`{name}`" for name in fields) + " |", "|---|" + "---|" * len(fields)]
    lines += [f"| `{preset}` | " + " | ".join(cell(getattr(values, name)) for name in fields) + " |"
              for preset, values in PRESETS.items()]
    return "\n".join(lines)


def test_parameters_page_preset_tables_match_the_code() -> None:
    """docs/parameters.md's preset tables are settings.PRESETS; on a change, paste the tables the message shows."""
    from dspy_concept_distill.phases.statistics import HOLD_BACK_MAX, HOLD_BACK_MIN

    page = (REPO / "docs" / "parameters.md").read_text()
    tables = {"presets": ["rounds", "num_batches", "max_candidates", "screen_size", "confidence_z", "futility_z",
                          "window", "extend", "final_z", "strict_z", "hold"],
              "budget": ["train_passes", "val_passes", "predictor_runs", "base_runs"]}
    for name, fields in tables.items():
        found = re.search(rf"<!-- {name}-table:start -->\n(.*?)\n<!-- {name}-table:end -->", page, re.S)
        assert found, f"docs/parameters.md has no {name}-table markers"
        expected = _preset_table(fields)
        assert found.group(1) == expected, f"docs/parameters.md's {name} table is stale; it should read:\n{expected}"
    for text in (page, (REPO / "docs" / "how-it-works.md").read_text()):
        assert f"{HOLD_BACK_MIN} valset examples on" in text and f"at most {HOLD_BACK_MAX}" in text
