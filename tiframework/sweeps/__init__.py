"""Optuna sweeps: the sweep-file schema and running it on one machine or many.

`schema` is the sweep file (`sweeps/<name>.yaml`) and its checks against the base
experiment; `storage` opens the study (a journal file, or PostgreSQL across machines,
with heartbeats so a dead worker's trial is retried); `worker` turns each trial into
ordinary `train` runs that share one loaded model; `launch` creates the study and starts
the workers. Reports over a study live in `tiframework.reports`.
"""
