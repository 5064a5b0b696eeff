"""Training embeddings: one run (`train`), or many through one frozen model (`population/`).

- `train`: `train(cfg)`, one run start to finish; the CLI, sweeps and tests call it;
- `preflight`: the checks a config passes before any model loads;
- `interrupt`: Ctrl-C / SIGTERM finish the step, save, and say how to resume;
- `module`: the LightningModule of one run;
- `loss`: the training loss (noise, timesteps, target, distance), shared with `population/`;
- `regularise`: norm control of the vectors and their EMA (applied after each optimizer step);
- `validation`: held-out validation loss, fixed noise at fixed timesteps, RNG untouched;
- `vector_log`: vector telemetry (vectors.csv, W&B) at eval steps;
- `schedules`: A1111's LR schedule string, cosine restarts, the one rate-at-step rule;
- `callbacks`: saves, previews, metrics, evaluation, guards, progress of a run;
- `run_eval`: a run's evaluation record (eval.csv, plateau, best checkpoint);
- `previews`: preview files and strips over steps;
- `population/`: `train_population(cfgs)`, K embeddings trained at once.
"""
