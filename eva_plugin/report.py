"""End-of-run summary: the text part of the run's report (``eva_plugin.run_report``), read from
the stage manifests and artifacts; ``eva report RUN_DIR`` writes the full report with plots."""

from __future__ import annotations

from pathlib import Path

from eva_plugin import run_report


def _data_from_reports(reports) -> dict:
    """The report's numbers from in-memory manifests alone (no artifacts to read)."""
    manifests = {r.iteration: {s: {k: v for k, v in (m or {}).items() if k != "config"}
                               for s, m in r.manifests.items() if m} for r in reports}
    return {"run_dir": "-", "creator": None, "status": run_report._status(manifests),
            "iterations": list(manifests), "summary": run_report.summary_rows(manifests),
            "rewards_by_origin": {}, "eval": run_report._eval(manifests),
            "stage_costs": run_report._costs(manifests)}


def print_summary(reports, output_dir: Path | None = None) -> None:
    """Print the report's text part: computed from the artifacts in ``output_dir`` when given,
    else from the manifests in ``reports``."""
    if output_dir is None:
        print("\n" + run_report.text_report(_data_from_reports(reports)))
        return
    print("\n" + run_report.text_report(run_report.collect(Path(output_dir)), Path(output_dir)))
    print(f"\nartifacts: {output_dir}  (plots: eva report {output_dir})")
