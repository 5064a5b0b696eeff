"""Optuna sweeps: the sweep-file schema and running it on one machine or many.

- `schema`: the sweep file (`sweeps/<name>.yaml`) and its checks against the base experiment;
- `storage`: the study (a journal file, or PostgreSQL across machines, with heartbeats so a
  dead worker's trial is retried);
- `launch`: creates the study and starts the workers;
- `worker`: each trial as ordinary `train` runs that share one loaded model, through a runner
  named by module (no torch is loaded until the runner is);
- `runner`: the real runner (`load_model`, `train`, populations, the memory estimate for `auto`);
- `arms`: comparison sweeps, every arm x seed one trial in a fixed order;
- `outcome`: a trial's runs' held-out scores as its objective value, or its failure reason;
- `population`: several trials taken at once and trained as one population;
- `population_size`: how many runs a worker trains at once (`--population`);
- `rolling`: a search with a pruner as a rolling population (a finished or pruned member's place
  goes to the next trial);
- `search`: the sampler and pruner a sweep file names;
- `pruning`: `pruner: noise`, stopping a trial only when it is behind beyond the standard errors;
- `confirm`: the confirmation stage, the search's top configurations re-trained on fresh seeds as a
  comparison. Reports over a study live in `tiframework.reports.sweep`.
"""
