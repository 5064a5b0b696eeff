"""The names of eval.csv's CLIP columns: the run folder's contract between the code that
scores runs and the code that reads them.

Light on purpose (no torch, no CLIP): `compare` and the sweep workers read these columns
without loading the scoring stack. Each image-averaged score also has an `_se` column
(`noise.se_key`).
"""

from __future__ import annotations

FIDELITY = "eval/clip_fidelity"
FIDELITY_BEST_MATCH = "eval/clip_fidelity_best_match"
FLEXIBILITY = "eval/clip_flexibility"
