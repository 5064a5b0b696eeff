"""Population training: K embeddings trained at once through one frozen model, each member a solo run.

- `train`: `train_population(cfgs)`, planning members, their run folders, the Lightning run;
- `compatible`: which configs may share one population (configs only, no torch);
- `module`: the population LightningModule (per-member optimizers, accumulation, AMP);
- `shared_pass`: one text-encoder and UNet pass for many members, each with its own loss;
- `outputs`: each member's writers (saves, previews, evaluation, W&B), as a solo run's;
- `evaluation`: members' previews and evaluations, generated together;
- `watchers`: members' validation loss and vector telemetry, as a solo run writes them.
"""
