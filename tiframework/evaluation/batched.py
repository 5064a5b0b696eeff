"""Several evaluations at once: their images generated in shared sampler calls.

Image generation is most of an evaluation's time, and on a GPU a sampler call with a
few images leaves it mostly idle. `score_together` takes several (evaluator, vectors,
step) jobs, e.g. a population's members evaluating at the same step, generates all
their images through `sd.generate.generate_requests` (each embedding's prompt
embeddings in its own rows, each seed its own noise), and scores each job's images
with its own evaluator. A job's row equals `evaluator.score(vectors, step)` up to the
float rounding of batched kernels (tests/evaluation/test_batched.py measures it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tiframework.evaluation.evaluator import Evaluator
from tiframework.sd.generate import generate_requests


def score_together(jobs: Sequence[tuple[Evaluator, torch.Tensor, int]],
                   max_images: int | None = None) -> list[dict[str, float]]:
    """One row per `(evaluator, vectors, step)` job, in order; each evaluator's `last_images`
    and `last_per_image` are set as by its own `score`.

    Jobs share sampler calls when their evaluators share the frozen parts and the `eval.*`
    generation settings (sampler, steps, guidance, negative prompt, size). `max_images`:
    the most images per sampler call (memory); None: as many as one prompt's seeds times
    the number of jobs in the group, i.e. each job's own calls side by side.
    """
    rows: list[dict[str, float] | None] = [None] * len(jobs)
    groups: dict[Any, list[int]] = {}
    for i, (evaluator, _, _) in enumerate(jobs):
        key = (id(evaluator.parts), tuple(sorted(evaluator.generation().items())))
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        first = jobs[members[0]][0]
        requests = [evaluator.requests(vectors) for evaluator, vectors, _ in (jobs[i] for i in members)]
        flat = [r for job in requests for r in job]
        cap = max_images or len(members) * max(len(r.seeds) for r in flat)
        settings = first.generation()
        images = generate_requests(first.parts, flat, max_images=cap, pipe=first.pipe, **settings)
        start = 0
        for i, job in zip(members, requests, strict=True):
            evaluator, vectors, step = jobs[i]
            rows[i] = evaluator.score_images(images[start:start + len(job)], vectors, step)
            start += len(job)
    return [row for row in rows if row is not None]
