"""What a comparison reports: the eval.csv metrics it knows, and which side of each is better.

Names are the run folder's eval-file contract (`eval/<score>`, each image-averaged score
with an `_se` column in runs made since standard errors were recorded); the CLIP columns
come from `evaluation.columns`, which loads no torch or CLIP into `compare`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tiframework.evaluation.columns import FIDELITY, FIDELITY_BEST_MATCH, FLEXIBILITY
from tiframework.evaluation.noise import SE_SUFFIX
from tiframework.reports.stats import Better

SELECT_FIDELITY = "select/clip_fidelity"  # the checkpoint-choice score (disjoint seeds)


@dataclass(frozen=True)
class Metric:
    key: str  # the eval.csv column
    label: str
    better: Better  # None: neither side is better (reported as "higher")
    tested: bool  # compared between arms (and counted in Holm's family); else shown only

    @property
    def se_key(self) -> str:
        return self.key + SE_SUFFIX


METRICS: tuple[Metric, ...] = (
    Metric(FIDELITY, "CLIP fidelity", "higher", True),
    Metric(FLEXIBILITY, "CLIP flexibility", "higher", True),
    Metric("eval/attribute_accuracy", "attribute accuracy (toy world)", "higher", True),
    Metric("eval/trait_recall", "trait recall (tagger)", "higher", True),
    Metric("eval/trait_leak", "trait leak (tagger)", "lower", True),
    # 1 = as saturated and detailed as the reference art; above eval.fried_threshold looks
    # fried. Below 1 is washed out, so lower is not simply better.
    Metric("eval/fried", "fried score (1 = like the reference; above it, higher is worse)", None, True),
    # Shown as curves; not tested: best-match fidelity mostly repeats fidelity, and the norm
    # is a diagnostic. Testing them would only cost the others power under Holm.
    Metric(FIDELITY_BEST_MATCH, "CLIP fidelity, best reference match", "higher", False),
    Metric("eval/vector_norm", "mean vector norm", None, False),
)
# Tested as the share of runs that reached a plateau (Fisher's exact test), per arm.
PLATEAU = Metric("plateau_reached", "runs that reached a plateau (share)", None, True)
# Rates over images: their per-arm interval is a bootstrap over seeds, which stays within [0, 1].
RATES = ("eval/trait_leak", "eval/trait_recall", "eval/attribute_accuracy")
# Per-run summaries compared between arms: the score at the checkpoint chosen on the
# selection seeds (no peeking at the compared numbers), and at the last evaluation.
SUMMARIES = {"best": "at the chosen checkpoint", "final": "at the last evaluation"}


def present(rows_of_runs: list[list[dict[str, float]]]) -> list[Metric]:
    """The catalog's metrics that any run's eval.csv holds, in catalog order."""
    seen = {k for rows in rows_of_runs for row in rows for k in row}
    return [m for m in METRICS if m.key in seen]
