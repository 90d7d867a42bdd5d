"""Renderers that read comparison records: Markdown, self-contained HTML, JUnit, and the Opik export
(reports.opik_export, which needs the opik extra)."""

from reports.html import render_html
from reports.junit import render_junit
from reports.markdown import render_markdown

__all__ = ["render_html", "render_junit", "render_markdown"]
