"""Trait recall and trait leak: the guide's central claim, measured on real models.

The guide prunes the tags that describe the character (her hair, eyes, outfit) from the
captions so that the embedding has to carry them; then `[name]` alone should draw them.
With `eval.tagger` (a local WD1.4 `model.onnx` + `selected_tags.csv`, the files
`tiframework tag` uses) every evaluation tags the generated images:

- `eval/trait_recall`: per `[name]` image, the share of the character's trait tags the
  tagger finds (confidence >= `eval.tagger_threshold`), averaged over the images. The traits
  are `eval.traits`, or the tags pruning removed (`variant.yaml` of `data.path`);
- `eval/trait_leak`: per image of a flexibility prompt listed in `eval.trait_leak`, the
  share of that prompt's tags that should *not* appear but do (the usual outfit under
  "wearing a swimsuit"): an embedding that overrides the prompt leaks. Lower is better.

Both come with their standard error over the images (`_se`). The toy world's tagger
(`eval.tagger: toyworld`, `toyworld.tagger`) runs through exactly this code.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from tiframework.config import EvalConfig
from tiframework.data.sources import TOYWORLD_CACHE, resolve_data_path
from tiframework.data.tagger import TagOptions
from tiframework.data.tags import VARIANT_FILE, tag_key
from tiframework.data.wd14 import Device, TagRow, WD14Model, load_tag_csv, preprocess
from tiframework.errors import UserError
from tiframework.evaluation.metrics import PLACEHOLDER
from tiframework.evaluation.noise import mean_se, se_key
from tiframework.toyworld.tagger import toy_tagger_files

log = logging.getLogger(__name__)

TRAIT_RECALL = "eval/trait_recall"
TRAIT_LEAK = "eval/trait_leak"
TOY_TAGGER = "toyworld"


def tag_shares(probs: np.ndarray, columns: Sequence[int], threshold: float) -> list[float]:
    """Per image (row of `probs`, (N, n_tags)), the share of `columns` at or above `threshold`."""
    if not columns:
        raise ValueError("tag_shares needs at least one tag column")
    found = np.asarray(probs)[:, list(columns)] >= threshold  # (N, T)
    return [float(v) for v in found.mean(axis=1)]


def variant_traits(folder: Path) -> list[str]:
    """The tags pruning removed from a dataset variant (its `variant.yaml`), most removed first."""
    path = Path(folder) / VARIANT_FILE
    if not path.is_file():
        raise UserError(f"eval.traits is not set and {folder} is not a pruned dataset variant (no {VARIANT_FILE}); "
                        "list the character's trait tags in eval.traits, or train on a `tiframework tags prune` "
                        "variant")
    try:
        record = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        raise UserError(f"{path}: not valid YAML; rewrite the variant with `tiframework tags prune`") from None
    removed = list((record.get("removed") or {}) if isinstance(record, dict) else {})
    if not removed:
        raise UserError(f"{path}: pruning removed no tags, so there are no traits to recall; set eval.traits")
    return [str(t) for t in removed]


def tagger_files(cfg: EvalConfig) -> tuple[Path, Path]:
    """(model.onnx, selected_tags.csv) named by the config; the toy world's are built on demand."""
    assert cfg.tagger is not None
    if cfg.tagger == TOY_TAGGER:
        model, tags = toy_tagger_files(TOYWORLD_CACHE)
        return model, Path(cfg.tagger_tags).expanduser() if cfg.tagger_tags else tags
    model = Path(cfg.tagger).expanduser()
    if not model.is_file():
        raise UserError(f"eval.tagger: {model} not found (a local WD1.4 model.onnx, or 'toyworld')")
    tags = Path(cfg.tagger_tags).expanduser() if cfg.tagger_tags else model.with_name("selected_tags.csv")
    if not tags.is_file():
        raise UserError(f"eval.tagger_tags: {tags} not found (the selected_tags.csv of the tagger's model repo)")
    return model, tags


def _columns(rows: Sequence[TagRow], tags: Sequence[str], key: str, tags_csv: Path) -> list[int]:
    index = {tag_key(r.name): i for i, r in enumerate(rows)}
    missing = [t for t in tags if tag_key(t) not in index]
    if missing:
        raise UserError(f"{key}: {', '.join(missing)} not among the tagger's tags ({tags_csv}); the tagger can "
                        "never find them. Fix the spelling or remove them")
    return [index[tag_key(t)] for t in tags]


@dataclass
class TraitScorer:
    """A loaded tagger with the trait and leak tag columns resolved."""

    model: WD14Model
    threshold: float
    traits: list[str]
    trait_columns: list[int]
    leak_columns: dict[str, list[int]]

    def probs(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, n_tags) tagger outputs, preprocessed as `tiframework tag` does."""
        return self.model.predict(np.stack([preprocess(im, self.model.size) for im in images]))

    def score(self, name_images: Sequence[Image.Image],
              flex_images: Mapping[str, Sequence[Image.Image]]) -> dict[str, float]:
        out: dict[str, float] = {}
        if name_images:
            recall, se = mean_se(tag_shares(self.probs(name_images), self.trait_columns, self.threshold))
            out |= {TRAIT_RECALL: recall, se_key(TRAIT_RECALL): se}
        shares = [s for prompt, cols in self.leak_columns.items() if flex_images.get(prompt)
                  for s in tag_shares(self.probs(flex_images[prompt]), cols, self.threshold)]
        if shares:
            leak, se = mean_se(shares)
            out |= {TRAIT_LEAK: leak, se_key(TRAIT_LEAK): se}
        return out


def load_trait_scorer(cfg: EvalConfig, data_path: str | None, device: str = "cpu") -> TraitScorer | None:
    """The run's trait scorer (None without `eval.tagger`), every input checked first:
    the `[name]` prompt, the leak prompts, the tag files, every trait and leak tag known to
    the tagger, then the model itself (loaded on CUDA when the run is, else on the CPU)."""
    if cfg.tagger is None:
        return None
    if PLACEHOLDER not in cfg.prompts:
        raise UserError(f"eval.tagger: trait recall is measured on the '{PLACEHOLDER}' prompt alone; "
                        f"add '{PLACEHOLDER}' to eval.prompts")
    for rule in cfg.trait_leak:
        if rule.prompt not in cfg.flexibility_prompts:
            raise UserError(f"eval.trait_leak: {rule.prompt!r} is not one of eval.flexibility_prompts (its images "
                            "are the ones tagged); add it there or fix the spelling")
    if cfg.traits is not None:
        traits = list(cfg.traits)
    elif data_path is None:
        raise UserError("eval.traits is not set and there is no data.path variant to read them from")
    else:
        traits = variant_traits(resolve_data_path(data_path, "data.path"))
    if not traits:
        raise UserError("eval.traits is empty; list the character's trait tags")
    model_path, tags_csv = tagger_files(cfg)
    rows = load_tag_csv(tags_csv)
    columns = _columns(rows, traits, "eval.traits", tags_csv)
    leak = {r.prompt: _columns(rows, r.tags, f"eval.trait_leak[{r.prompt!r}]", tags_csv) for r in cfg.trait_leak}
    wd_device: Device = "cpu" if str(device) == "cpu" else "auto"
    model = WD14Model(model_path, wd_device)
    if model.n_outputs != len(rows):
        raise UserError(f"{tags_csv} has {len(rows)} tags but {model_path} outputs {model.n_outputs}; "
                        "use the selected_tags.csv from the same model repo")
    threshold = cfg.tagger_threshold if cfg.tagger_threshold is not None else TagOptions().general_threshold
    log.info("trait recall over %s (tagger %s on %s, threshold %.2f)", ", ".join(traits), model_path.name,
             model.provider, threshold)
    return TraitScorer(model, threshold, traits, columns, leak)
