"""``write_report``: the report folder, with ``report.md``, a self-contained ``report.html`` (the
plots embedded as base64), ``report.json`` (every plotted number) and the PNGs."""

from __future__ import annotations

import base64
import html
import json
import math
import re
from pathlib import Path

from eva_plugin.report.collect import collect
from eva_plugin.report.plots import write_plots
from eva_plugin.report.text import text_report


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def md_text(text: str) -> str:
    """``text`` as literal Markdown: control characters (a newline in a folder's name) shown as escapes and
    every character Markdown gives a meaning backslash-escaped."""
    text = "".join(repr(c)[1:-1] if ord(c) < 32 or ord(c) == 127 else c for c in text)
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~&])", r"\\\1", text)


def md_code(text: str) -> str:
    """``text`` as a Markdown code span, fenced with more backticks than it holds in a row."""
    text = "".join(repr(c)[1:-1] if ord(c) < 32 or ord(c) == 127 else c for c in text)
    fence = "`" * (max(map(len, re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}"


def _markdown(run_dir: Path, data: dict, text: str, plots: list[tuple[str, str]]) -> str:
    fence = "`" * max(3, max(map(len, re.findall(r"`+", text)), default=0) + 1)
    md = [f"# EVA run report: {md_text(run_dir.name)}", "", f"{md_code(str(run_dir))}: {data['status']}", "",
          fence, text, fence, ""]
    md += [f"## {caption}\n\n![{caption}]({name})\n" for name, caption in plots]
    return "\n".join(md)


def _html(run_dir: Path, data: dict, text: str, plots: list[tuple[str, str]], out: Path) -> str:
    body = [f"<h1>EVA run report: {html.escape(run_dir.name)}</h1>",
            f"<p><code>{html.escape(str(run_dir))}</code>: {html.escape(data['status'])}</p>",
            f"<pre>{html.escape(text)}</pre>"]
    for name, caption in plots:
        encoded = base64.b64encode((out / name).read_bytes()).decode("ascii")
        body.append(f"<h2>{html.escape(caption)}</h2>\n<img alt=\"{html.escape(caption)}\" "
                    f"src=\"data:image/png;base64,{encoded}\">")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>EVA run report</title>"
            "<style>body{font-family:sans-serif;margin:2em}pre{font-size:12px}img{max-width:100%}</style>"
            "</head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(run_dir: Path, out: Path | None = None, data: dict | None = None) -> Path:
    """Write ``report.md``, ``report.html``, ``report.json`` and the PNGs (``data``: ``collect(run_dir)``,
    read when not given); the report folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        from eva_plugin.errors import EvaError

        raise EvaError(f"{run_dir} is not a folder")
    out = Path(out) if out is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    data = collect(run_dir) if data is None else data
    plots = write_plots(data, out)
    data["plots"] = [name for name, _ in plots]
    (out / "report.json").write_text(json.dumps(_jsonable(data), indent=1, ensure_ascii=False) + "\n")
    text = text_report(data, run_dir)
    (out / "report.md").write_text(_markdown(run_dir, data, text, plots))
    (out / "report.html").write_text(_html(run_dir, data, text, plots, out))
    return out
