"""Outputs of the real-task comparison: a CSV, a Markdown table and a PNG plot (test accuracy against student
calls). Each file records the command that made it and the library revision (git short hash, ``+dirty`` when
the library or benchmark code had uncommitted changes)."""

from __future__ import annotations

import csv
import logging
import textwrap
from collections import defaultdict
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from .compare import Row

logger = logging.getLogger(__name__)


def write_csv(rows: list[Row], path: Path, meta: dict[str, Any]) -> None:
    """Comment lines (``# key: value``) with the metadata, then one row per optimizer
    (``pandas.read_csv(path, comment="#")`` reads it)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        for key, value in meta.items():
            handle.write(f"# {key}: {value}\n")
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(Row)])
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "n/a" if value is None else format(value, fmt)


def markdown(rows: list[Row], meta: dict[str, Any], *, title: str, notes: list[str]) -> str:
    """The Markdown report: provenance, the table, notes, and what each optimizer returned."""
    lines = [f"# {title}", ""]
    lines += [f"- {key}: `{value}`" if key == "command" else f"- {key}: {value}" for key, value in meta.items()
              if key != "title"]
    lines += ["", "| optimizer | test accuracy (95% CI) | valset | student calls (planned) | teacher calls "
              "| student tokens in / out | teacher tokens in / out | wall s | CPU s | settings |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        test = ("failed: " + (r.error or "")[:80]) if r.status != "ok" else (
            f"{_num(r.test_score)} [{_num(r.ci_low)}, {_num(r.ci_high)}] ({r.ci_method}, n={r.n_test})")
        planned = "" if r.planned_student_calls is None else f" ({r.planned_student_calls})"
        ledger = "" if r.ledger_student_calls is None else f"; own ledger {r.ledger_student_calls}"
        lines.append(f"| {r.optimizer} | {test} | {_num(r.val_score)} | {r.student_calls}{planned}{ledger} | "
                     f"{r.teacher_calls} | {r.student_input_tokens} / {r.student_output_tokens} | "
                     f"{r.teacher_input_tokens} / {r.teacher_output_tokens} | {r.wall_seconds:.0f} | "
                     f"{r.cpu_seconds:.0f} | {r.settings} |")
    lines += ["", *[f"- {note}" for note in notes], "", "## Instructions each optimizer returned", ""]
    for r in rows:
        text = (r.instructions or "(none: the run failed)").replace("\n", " ")
        lines.append(f"- **{r.optimizer}**: {text[:600]}{' ...' if len(text) > 600 else ''}")
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path, meta: dict[str, Any], *, title: str) -> bool:
    """Test accuracy (with its 95% interval) against student calls spent compiling; False without matplotlib.
    Optimizers that land on the same point share one legend entry."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning('no PNG plot: matplotlib is not installed (pip install -e ".[bench]")')
        return False
    points: dict[tuple[int, float], list[Row]] = defaultdict(list)
    for r in rows:
        if r.status == "ok" and r.test_score is not None:
            points[(r.student_calls, round(r.test_score, 6))].append(r)
    fig, ax = plt.subplots(figsize=(8.5, 5.6))
    for (calls, score), group in points.items():
        r = group[0]
        err = [[max(0.0, score - r.ci_low)], [max(0.0, r.ci_high - score)]]
        label = f"{', '.join(g.optimizer for g in group)} ({calls} calls, {score:.3f})"
        ax.errorbar([calls], [score], yerr=err, fmt="o", capsize=4, label=label)
    ax.set_xlabel("student LM calls while compiling (counted at the LM)")
    ax.set_ylabel("test accuracy (95% CI)")
    ax.set_ylim(-0.05, 1.05)
    ax.margins(x=0.2)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    footer = [*textwrap.wrap(meta["command"], 150), f"revision {meta['revision']}, {meta['date']}"]
    fig.text(0.01, 0.01, "\n".join(footer), fontsize=6, family="monospace", va="bottom")
    fig.tight_layout(rect=(0, 0.03 + 0.022 * len(footer), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def read_csv(path: Path) -> tuple[dict[str, str], list[Row]]:
    """The metadata and rows of a CSV written by :func:`write_csv`."""
    lines = path.read_text(encoding="utf-8").splitlines()
    meta = dict(line[2:].split(": ", 1) for line in lines if line.startswith("# "))
    types = {f.name: f.type for f in fields(Row)}
    rows = []
    for record in csv.DictReader([line for line in lines if not line.startswith("# ")]):
        values: dict[str, Any] = {}
        for name, text in record.items():
            kind = str(types[name])
            if text == "" and "None" in kind:
                values[name] = None
            elif kind.startswith("int"):
                values[name] = int(text)
            elif kind.startswith("float"):
                values[name] = float(text)
            else:
                values[name] = text
        rows.append(Row(**values))
    return meta, rows


def write_all(rows: list[Row], out_dir: Path, stem: str, meta: dict[str, Any], *, title: str,
              notes: list[str]) -> list[Path]:
    """``stem``.csv, .md and .png under ``out_dir``; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / f"{stem}.csv", out_dir / f"{stem}.md"]
    write_csv(rows, written[0], meta)
    written[1].write_text(markdown(rows, meta, title=title, notes=notes), encoding="utf-8")
    if plot(rows, out_dir / f"{stem}.png", meta, title=title):
        written.append(out_dir / f"{stem}.png")
    return written
