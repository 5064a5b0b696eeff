"""Training an embedding: `train(cfg)` in `train`, the LightningModule in `module`, A1111's
LR schedules in `schedules`, the run's callbacks in `callbacks`, preview files in `previews`."""
