"""`tiframework sweep-report`: what a study found, as tables, plots and a page.

- `report`: `write_report(target)`, trials.csv/.md, importances, report.md.
- `trials`: reading a study: trials, their per-seed numbers, why they failed.
- `plots`: the report's PNGs (history, fidelity vs VPT, plateau vs learning rate, Pareto front).
- `confirmed`: the search's confirmation stage read back: the confirmed best with its interval,
  its difference to the baseline, the winner's curse and the plateaus (the report's headline).
- `page`: intervals over seeds for a search, and the interactive report.html.
"""
