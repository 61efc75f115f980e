"""A run's report, read from its artifacts alone, for any run folder (finished, stopped or crashed):
``eva report RUN_DIR``, ``eva compare RUN_A RUN_B`` and the summary printed at the end of a run.

Where things are: ``run_folder`` (reading manifests and datasets), ``collect`` (the numbers),
``metrics`` (per-iteration scalars for trackers), ``text`` (the tables), ``plots`` (the PNGs),
``write`` (report.md / .html / .json), ``compare`` (two runs). matplotlib and datasets are imported
only inside the functions that need them."""

from __future__ import annotations

from pathlib import Path

from eva_plugin.report.collect import collect, summary_rows
from eva_plugin.report.compare import compare_text, held_out_difference
from eva_plugin.report.metrics import iteration_metrics
from eva_plugin.report.run_folder import read_manifests
from eva_plugin.report.text import text_report, text_sections
from eva_plugin.report.write import write_report

__all__ = ["collect", "compare_text", "held_out_difference", "iteration_metrics", "print_summary", "read_manifests",
           "summary_rows", "text_report", "text_sections", "write_report"]


def print_summary(output_dir: Path) -> None:
    """Print the report's text part, read from the run's artifacts (the end of ``eva run``)."""
    output_dir = Path(output_dir)
    print("\n" + text_report(collect(output_dir), output_dir))
    print(f"\nartifacts: {output_dir}  (plots: eva report {output_dir})")
