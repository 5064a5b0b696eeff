"""Scores of an embedding, and what they say about a run.

- `clipscore` (+ `clip_configs/`): open_clip behind one adapter, local weights only;
- `metrics`: CLIP fidelity / flexibility and the eval-config checks; `columns`: their eval.csv
  names, importable without torch by the readers of run folders;
- `noise`: standard errors of image-averaged scores;
- `traits`: trait recall / leak from a WD1.4 tagger;
- `evaluator`: `Evaluator`, images for the eval prompts scored into one row (held-out and
  selection seeds); `batched`: several evaluations' images generated in shared sampler
  calls; `evidence`: the small `eval_images/` a person looks at;
- `diagnostics`: NaN loss, exploding vectors, fried images, not learning;
- `plateau`, `summary`: noise-aware plateau of a run or an arm, the unbiased best checkpoint;
- `rescore`: `tiframework eval`, scoring a finished run's checkpoints.
"""
