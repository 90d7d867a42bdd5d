"""Renderers that read comparison records: Markdown, self-contained HTML, JUnit, and the Opik export."""
