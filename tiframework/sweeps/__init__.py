"""Running Optuna sweeps: storage (journal file or PostgreSQL), workers, and reports.

`tiframework.sweep` holds the sweep-file schema; this package runs it:
`storage` opens the study (with heartbeats, so a dead worker's trial is retried),
`worker` turns each trial into ordinary `train` runs that share one loaded model, and
`report` writes tables and plots from a finished (or running) study.
"""
