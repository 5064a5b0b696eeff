"""Scores of an embedding, and what they say about a run.

- `clipscore` (+ `clip_configs/`): open_clip behind one adapter, local weights only;
- `metrics`: CLIP fidelity / flexibility and the eval-config checks;
- `evaluator`: `Evaluator`, images for the eval prompts scored into one row;
- `diagnostics`: NaN loss, exploding vectors, fried images, not learning;
- `plateau`, `summary`: best and plateau steps of a curve;
- `rescore`: `tiframework eval`, scoring a finished run's checkpoints.
"""
