"""`tiframework compare`: arms of run folders, compared metric by metric with intervals and tests.

- `report`: `compare(targets)` and `build_comparison(runset)`, the whole result as plain data.
- `targets`: what compare was pointed at (run folders, globs, a sweep's study) turned into arms.
- `runset`: run folders read back, grouped into arms, with what differs between them.
- `metrics`: the eval.csv metrics a comparison knows and which side of each is better.
- `headline`: the answer at the top: per metric which arm is better, an equivalence test (TOST)
  within a margin, and notes on shared eval images and partly matched seeds.
- `pairs`: two arms on per-seed numbers: the test, Holm, the verdicts.
- `verdicts`: the verdict table and report text (report.md, the terminal), shared with `page`.
- `page`: report.html, the verdict table, curves, per-seed scores and eval images.
"""
