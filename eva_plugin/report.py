"""End-of-run summary: the text part of the run's report (``eva_plugin.run_report``), read from
the stage manifests and artifacts; ``eva report RUN_DIR`` writes the full report with plots."""

from __future__ import annotations

from pathlib import Path

from eva_plugin import run_report


def print_summary(output_dir: Path) -> None:
    """Print the report's text part, read from the run's artifacts (the end of ``eva run``)."""
    output_dir = Path(output_dir)
    print("\n" + run_report.text_report(run_report.collect(output_dir), output_dir))
    print(f"\nartifacts: {output_dir}  (plots: eva report {output_dir})")
