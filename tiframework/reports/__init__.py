"""Reports over many runs, one subpackage per feature; the statistics and page rendering they share sit here.

- `compare/`: `tiframework compare`, arms of runs compared metric by metric.
- `sweep/`: `tiframework sweep-report`, what a study found.
- `stats`: intervals over seeds, tests between arms, power, Holm, verdict wording.
- `html`: self-contained HTML pages (jinja2 templates in `templates/`, plotly figures).
"""
