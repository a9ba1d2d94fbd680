"""Where the benchmarks read and write: the repository, the data shipped with it, and the one default output
folder.

Every command writes under ``LOCAL_RESULTS`` (``benchmarks/results/local/``, ignored by git) unless ``--out`` names
another path; the committed results in ``benchmarks/results/`` change only when named with ``--out``.
"""

from __future__ import annotations

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1]
REPOSITORY = BENCHMARKS.parent
SHIPPED_DATA = BENCHMARKS / "data"
COMMITTED_RESULTS = BENCHMARKS / "results"
LOCAL_RESULTS = COMMITTED_RESULTS / "local"  # untracked (.gitignore): every command's default output folder


def shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (for help texts and messages)."""
    path = Path(path)
    return str(path.relative_to(REPOSITORY)) if path.is_absolute() and path.is_relative_to(REPOSITORY) else str(path)
