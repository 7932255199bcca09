"""Reports of checker runs: SVG sequence diagrams, HTML pages, JSON for tools.

- :func:`passthru.report.svg.sequence_svg`: one run's events as an SVG sequence diagram;
- :func:`passthru.report.html.render_run`: one run as a self-contained HTML page;
- :func:`passthru.report.json.verdicts_json`: verdicts as a JSON-ready dict;
- :func:`write_report`: a directory with an index, a page and a schedule per counterexample,
  and ``report.json``.

Nothing here needs the network or a script to display: the pages inline their CSS and SVG.
"""

from __future__ import annotations

from .site import write_report

__all__ = ["write_report"]
