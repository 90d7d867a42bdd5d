"""Renderers that read comparison records: Markdown, self-contained HTML, JUnit, the run history page, and the Opik
export (reports.opik_export, which needs the opik extra)."""

from reports.history_html import HistoryRun, render_history
from reports.html import render_html
from reports.junit import render_junit
from reports.markdown import render_markdown

__all__ = ["HistoryRun", "render_history", "render_html", "render_junit", "render_markdown"]
