"""Benchmark report from the results store's frames: compute, then render, then write.

- :func:`compute_report` turns the ``runs`` and ``evaluations`` frames (the Results schema of
  :mod:`normzoo.bench.record.store`) into a :class:`Report`: tables, statistics, findings, curves;
- :func:`render_markdown` turns a Report into markdown text;
- :func:`write_report` draws the figures and writes ``report.md`` and CSV tables;
- :func:`build_report` does all three. No function changes its arguments.
"""

from normzoo.report.build import build_report, compute_report, headline_table, write_report
from normzoo.report.markdown import marked_blocks, render_markdown, replace_between, write_block
from normzoo.report.model import Report, ReportResult
from normzoo.report.select import method_label

__all__ = [
    "Report",
    "ReportResult",
    "build_report",
    "compute_report",
    "headline_table",
    "marked_blocks",
    "method_label",
    "render_markdown",
    "replace_between",
    "write_block",
    "write_report",
]
