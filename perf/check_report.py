"""Rows, files and the Markdown summary of ``python -m perf.gpu_check``.

Every measurement becomes one CSV row (columns :data:`CSV_COLUMNS`, appended to the section's
file of :data:`CSV_FILES`); :class:`Report` collects the display tables and rewrites the Markdown
summary ``gpu_check_<date>_<gpu>.md`` after each section.
"""

from __future__ import annotations

import csv
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from perf.check_cases import Case
from perf.check_plan import Plan
from tritonkron.tuning.entry import dtype_name

# fmt: off
CSV_COLUMNS = [
    "op", "provider", "shape_name", "B", "m", "n", "dtype", "metric", "unit", "p50", "p20", "p80",
    "gpu_name", "torch", "triton", "git_commit", "timestamp", "variant", "tolerance", "status", "note",
]
# fmt: on
CSV_FILES = {
    "correctness": "gpu_check_correctness.csv",
    "timing": "gpu_check_timing.csv",
    "step": "gpu_check_step.csv",
    "e2e": "gpu_check_e2e.csv",  # its own columns: perf.gpu_e2e.E2E_COLUMNS
}


def make_row(
    env: dict[str, str],
    case: Case,
    provider: str,
    metric: str,
    unit: str,
    q: Sequence[float | None],
    *,
    tolerance: float | None = None,
    status: str = "",
    note: str = "",
) -> dict[str, Any]:
    """One CSV row (:data:`CSV_COLUMNS`); ``q`` is (p50, p20, p80), None for blanks."""
    b = case.block
    return {
        "op": case.op,
        "provider": provider,
        "shape_name": b.name,
        "B": b.B,
        "m": b.m,
        "n": b.n,
        "dtype": dtype_name(case.dtype),
        "metric": metric,
        "unit": unit,
        "p50": q[0],
        "p20": q[1],
        "p80": q[2],
        "gpu_name": env["gpu_name"],
        "torch": env["torch"],
        "triton": env["triton"],
        "git_commit": env["git_commit"],
        "timestamp": env["timestamp"],
        "variant": case.variant,
        "tolerance": tolerance,
        "status": status,
        "note": note,
    }


def append_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str] = CSV_COLUMNS) -> Path:
    """Append ``rows`` to ``path`` (header ``columns`` written once; keys missing from a row stay
    blank); a file with other columns is left alone and the rows go to a timestamped sibling
    instead. Returns the file written."""
    if not rows:
        return path
    if path.exists():
        with path.open(newline="") as f:
            header = next(csv.reader(f), None)
        if header != list(columns):
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
            path = path.with_name(f"{path.stem}_{stamp}{path.suffix}")
            print(f"warning: {path.name}: existing CSV has other columns; writing {path}", file=sys.stderr)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        if new:
            writer.writeheader()
        writer.writerows(rows)
    return path


def fmt(x: float | None, digits: int = 3) -> str:
    """``x`` with ``digits`` significant digits; "-" for None or NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}g}"


def markdown_table(records: list[dict[str, Any]]) -> str:
    """Records as a Markdown table ("(none)" when empty)."""
    return pd.DataFrame(records).to_markdown(index=False) if records else "(none)"


@dataclass
class Report:
    """Collects every section's display table and writes the CSVs and the Markdown summary."""

    out_dir: Path
    env: dict[str, str]
    smi: str
    plan: Plan
    started: float = field(default_factory=time.monotonic)
    peaks: dict[str, float] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    def markdown_path(self) -> Path:
        """``gpu_check_<date>_<gpu>.md`` under the output folder."""
        date = self.env["timestamp"][:10]
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", self.env["gpu_name"]).strip("-") or "unknown"
        return self.out_dir / f"gpu_check_{date}_{gpu}.md"

    def section(self, name: str, rows: list[dict[str, Any]], kind: str | None, title: str) -> None:
        """Print a section's table, append its CSV rows, rewrite the Markdown file."""
        table = self.tables.get(name, [])
        print(f"\n## {title}\n\n{markdown_table(table)}")
        for note in self.notes.get(name, []):
            print(f"- {note}")
        if kind is not None:
            append_csv(self.out_dir / CSV_FILES[kind], rows)
        self.write_markdown()

    def write_markdown(self) -> Path:
        """Write the Markdown summary (environment, peaks, one table per section)."""
        env_rows = [{"key": k, "value": v} for k, v in self.env.items()]
        parts = [
            f"# tritonkron GPU check: {self.env['gpu_name']}, {self.env['timestamp'][:10]}",
            f"Mode `{self.plan.mode}`; runtime {self.elapsed():.0f} s when this file was written; "
            f"command `python -m perf.gpu_check {' '.join(sys.argv[1:])}`.",
            "## Environment",
            markdown_table(env_rows),
            "```text\n" + self.smi + "\n```",
        ]
        if self.peaks:
            peak_rows = [
                {"peak": k, "value": fmt(v, 4), "unit": "GB/s" if k == "bandwidth" else "TFLOP/s"}
                for k, v in self.peaks.items()
            ]
            parts += ["## Device peak (measured)", markdown_table(peak_rows)]
        titles = {
            "correctness": "Correctness (Triton vs float64 reference)",
            "timing": "Op timing",
            "step": "Optimizer step (tk.Kron, one GPT-2-small block, fp32)",
            "e2e": "End-to-end training step (GPT-2-small-shaped model; perf.gpu_e2e)",
        }
        for name, title in titles.items():
            if name in self.tables:
                parts += [f"## {title}", markdown_table(self.tables[name])]
                parts += [f"- {note}" for note in self.notes.get(name, [])]
        parts += [
            "## Models",
            "FLOP / byte models and the fraction-of-peak rule: see the docstring of "
            "`perf/gpu_check.py`; shapes: `perf/shapes.py`.",
        ]
        path = self.markdown_path()
        path.write_text("\n\n".join(parts) + "\n")
        return path
