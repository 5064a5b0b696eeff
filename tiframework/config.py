"""Typed experiment configuration.

The pydantic models below are the schema: defaults, help text (shown by
`tiframework config keys`) and validation live here and nowhere else.
YAML files may `extends:` a base file (path relative to the extending file);
command-line overrides are dotted `key=value` pairs whose values are parsed as YAML
(`training.max_steps=20`, `preview.seeds=[1,2]`). Unknown keys and wrong types are
errors that name the key.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tiframework.configoptions import EMAOptions, LossOptions, NormOptions, ValidationConfig
from tiframework.configpaths import anchor_paths
from tiframework.errors import UserError
from tiframework.fileio import atomic_write_text
from tiframework.yamltree import deep_merge, parse_overrides, read_yaml_mapping, set_dotted

log = logging.getLogger(__name__)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    preset: str | None = Field(
        "tiny",
        description="built-in model: 'tiny' (random, CPU tests), 'sd15-random' (SD 1.5 architecture, random "
        "weights, for benchmarks) or 'toyworld' (the project-trained toy model). Ignored when `path` is set.",
    )
    path: str | None = Field(
        None, description="a diffusers folder, or one SD 1.x checkpoint file (.safetensors or .ckpt)"
    )
    clip_skip: int = Field(1, ge=1, le=12, description="1 = last CLIP layer; 2 = penultimate (A1111 style)")
    preview_vae: str | None = Field(
        None, description="an external VAE (diffusers folder or file) used for previews only"
    )
    train_with_preview_vae: bool = Field(
        False, description="also encode training latents with `preview_vae` (not recommended: fried embeddings)"
    )
    seed: int = Field(0, description="seed for presets built with random weights")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="dtype of the frozen UNet / text encoder / VAE: auto = the GPU's autocast dtype "
        "(bfloat16 where supported, else float16; float32 with training.precision=32), float32 on a CPU; "
        "an explicit value applies on any device. The trained vectors are always float32",
    )

    @model_validator(mode="after")
    def _needs_source(self) -> ModelConfig:
        if not self.preset and not self.path:
            raise ValueError("no model given; pass your SD 1.x checkpoint (.safetensors/.ckpt) or diffusers "
                             "folder on the command line, e.g. model.path=~/models/sd15.safetensors "
                             "(or model.preset=tiny, sd15-random or toyworld to try the plumbing)")
        return self


class DataConfig(Section):
    path: str | None = Field(None, description="folder of images with same-stem .txt captions (or a variant)")
    max_side: int = Field(512, ge=8, description="images are fitted within this many pixels, keeping ratio")
    bucket_step: int | None = Field(
        None, ge=8, description="bucket sides are multiples of this (default: 64, or the preset's own)"
    )
    templates: list[str] = Field(
        default_factory=lambda: ["[filewords], [name]"], description="prompt template lines"
    )
    template_file: str | None = Field(None, description="a templates file (one template a line); overrides `templates`")
    shuffle_tags: bool = Field(True, description="shuffle caption tags split by ','")
    keep_tokens: int = Field(0, ge=0, description="keep the first N tags in place when shuffling")
    tag_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="probability of dropping each tag")
    latent_sampling: Literal["once", "deterministic", "random"] = Field(
        "deterministic",
        description="A1111 latent sampling: one posterior sample, the posterior mean, or resampled each use",
    )
    cache_dir: str | None = Field(
        ".cache/latents", description="on-disk latent cache (keyed by image, model and size); null disables"
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")


# The embedding file formats (see `sd.embeddings`): A1111's pickle and safetensors, diffusers'.
EmbeddingFormat = Literal["a1111-pt", "a1111-safetensors", "diffusers"]


class EmbeddingConfig(Section, NormOptions):
    name: str = Field("mychar", min_length=1, description="the embedding's name, used as [name] in prompts; "
                      "a made-up word, not a CLIP word (miku) nor a word of the captions (1girl)")
    init_text: str = Field("", description="initialization text, e.g. 'black hair, red eyes'; at most "
                           "vectors_per_token tokens; empty: zero vectors")
    # 75 = one prompt chunk: the name's vectors must fit in one.
    vectors_per_token: int = Field(16, ge=1, le=75, description="number of vectors (VPT), 1 to 75")


class TrainingConfig(Section, LossOptions, EMAOptions):
    learning_rate: str = Field(
        "0.005",
        description="A1111 schedule, e.g. '0.0005:5000, 0.0001:10000' (each rate until that step)",
    )
    lr_scheduler: Literal["a1111", "cosine_restarts"] = Field(
        "a1111", description="'a1111' schedule string, or cosine annealing with warm restarts"
    )
    cosine_cycle_steps: int = Field(1000, ge=1, description="first cycle length for cosine_restarts")
    cosine_cycle_mult: int = Field(1, ge=1, description="cycle length multiplier for cosine_restarts")
    batch_size: int = Field(1, ge=1)
    accumulate: int = Field(1, ge=1, description="micro-batches per optimizer step (gradient accumulation)")
    max_steps: int = Field(5000, ge=1, description="optimizer steps (A1111 counts these, not micro-batches)")
    save_every: int = Field(250, ge=0, description="save an embedding every N steps (0 = only at the end)")
    grad_clip: Literal["none", "norm", "value"] = Field("none", description="gradient clipping mode")
    grad_clip_value: float = Field(1.0, gt=0, description="max norm, or max absolute value, for grad_clip")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (A1111 uses 0)")
    precision: Literal["auto", "32", "bf16", "fp16"] = Field(
        "auto", description="autocast on a GPU: auto = bf16 where supported, else fp16 (with a loss scaler); "
        "a CPU runs without autocast"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = the GPU when one is visible")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto", description="recompute UNet and text-encoder activations in the backward pass (less memory, "
        "slower steps): auto = on for SD-1.5-sized models on a GPU, off on a CPU and for small models",
    )
    compile: bool = Field(
        False, description="torch.compile the UNet for training steps (the first steps compile; a CPU needs a "
        "C++ compiler)",
    )
    offload_vae: bool = Field(
        True, description="on a GPU, move the VAE to the CPU once latents are cached; it comes back only to "
        "decode previews and evaluation images",
    )
    seed: int = Field(0, description="seeds data order, noise and timesteps (CPU runs repeat exactly)")
    stop_on_plateau: bool = Field(
        False, description="end the run once its fidelity plateau is confirmed (eval.plateau_*; needs eval.every)"
    )

    @field_validator("learning_rate", mode="before")
    @classmethod
    def _rate_to_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


class GenerationConfig(Section):
    """How images are drawn: previews and evaluation each have their own values of these."""

    sampler: Literal["ddim", "euler", "euler_a", "dpmpp_2m", "pndm"] = "ddim"
    steps: int = Field(20, ge=1, description="sampling steps")
    guidance_scale: float = Field(7.0, ge=0, description="classifier-free guidance scale")
    negative_prompt: str = ""
    width: int | None = Field(None, description="default: the model's native size")
    height: int | None = Field(None, description="default: the model's native size")


class PreviewConfig(GenerationConfig):
    every: int = Field(250, ge=0, description="preview every N steps (0 = never)")
    prompts: list[str] = Field(
        default_factory=list, description="preview prompts; default: '[name]' and one dataset caption"
    )
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)


# Keys of older configs (and older run folders' config.yaml): ignored with a warning, so those runs
# can still be re-scored. key -> what replaced it.
# With eval.seeds_follow_training_seed, training seed s is scored on eval.seeds + s x this
# (disjoint image sets while the seed lists span fewer than this many numbers).
EVAL_SEED_STRIDE = 1000

RETIRED_EVAL_KEYS = {"plateau_window": "eval.plateau_patience / eval.plateau_smoothing (in evaluations)",
                     "plateau_epsilon": "eval.plateau_z (gains are judged against the measured eval noise)"}


class LeakRule(Section):
    """One `eval.trait_leak` entry: a flexibility prompt and tags its images must not show."""

    prompt: str = Field(description="one of eval.flexibility_prompts")
    tags: list[str] = Field(min_length=1, description="tags that must not appear in its images")


class EvalConfig(GenerationConfig):
    every: int = Field(0, ge=0, description="score fidelity/flexibility every N steps (0 = off)")
    reference: str | None = Field(None, description="folder of reference art for fidelity")
    clip_model: str = Field(
        "ViT-L-14-quickgelu",
        description="open_clip model name (or a project-registered config); OpenAI's CLIP weights need -quickgelu",
    )
    clip_pretrained: str | None = Field(
        None, description="local open_clip weights file for `clip_model` (never downloaded); 'toyworld': the toy "
        "world's own CLIP weights, shipped in the package (with clip_model tif-toy-clip)"
    )
    prompts: list[str] = Field(
        default_factory=lambda: ["[name]", "1girl, [name], standing"], description="fidelity prompts"
    )
    flexibility_prompts: list[str] = Field(
        default_factory=lambda: ["[name], wearing a swimsuit", "[name], from behind", "[name], outdoors, night"],
        description="prompts that change outfit/pose/background; scored against the text without [name]",
    )
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1,
                             description="held-out seeds: every reported eval/* score is measured on these")
    selection_seeds: list[int] | None = Field(None, min_length=1, description="seeds that choose the best checkpoint "
                                              "(select/clip_fidelity; fidelity prompts only), disjoint from `seeds`; "
                                              "default: as many as `seeds`, numbered after the largest of them")
    seeds_follow_training_seed: bool = Field(
        False, description=f"score each training seed on its own images: eval.seeds and the selection seeds "
        f"shifted by {EVAL_SEED_STRIDE} x training.seed, so a comparison over seeds also averages over eval "
        "images (runs with the same training seed share theirs, so arms still pair)")
    verdict_after: int = Field(500, ge=0, description="warn 'not learning' if fidelity is still at baseline here")
    verdict_margin: float = Field(0.01, ge=0, description="fidelity gain over step 0 that counts as learning")
    fried_threshold: float = Field(2.0, gt=0, description="warn when previews' fried score passes this")
    max_vector_norm: float | None = Field(None, gt=0, description="stop when a vector's L2 norm exceeds this")
    plateau_z: float = Field(2.0, gt=0, description="a later fidelity improves on an earlier one when it is more "
                             "than this many standard errors of their (paired) difference above it")
    plateau_patience: int = Field(2, ge=1, description="evaluations after a plateau step that must not improve on "
                                  "it before it counts (and before training.stop_on_plateau stops)")
    plateau_smoothing: int = Field(1, ge=1, description="centered running mean over this many evaluations (odd) "
                                   "before the plateau rule; 1 = none")
    tagger: str | None = Field(None, description="a local WD1.4 model.onnx (or 'toyworld', the toy world's) for "
                               "eval/trait_recall and eval/trait_leak")
    tagger_tags: str | None = Field(None, description="the tagger's selected_tags.csv; default: beside the model")
    tagger_threshold: float | None = Field(None, ge=0, le=1, description="confidence at which a tag counts as "
                                           "found; default: the tag command's general threshold (0.35)")
    traits: list[str] | None = Field(None, description="the character's trait tags for eval/trait_recall; "
                                     "default: the tags pruning removed (variant.yaml of data.path)")
    # A list, not a mapping: an override `eval.trait_leak=[]` must be able to clear it (mappings merge).
    trait_leak: list[LeakRule] = Field(default_factory=list, description="flexibility prompts and tags that must "
                                       "not appear in their images (eval/trait_leak), e.g. "
                                       "[{prompt: '[name], wearing a swimsuit', tags: [green dress]}]")

    @model_validator(mode="before")
    @classmethod
    def _retired_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(k in data for k in RETIRED_EVAL_KEYS):
            data = dict(data)
            for key, instead in RETIRED_EVAL_KEYS.items():
                if data.pop(key, None) is not None:
                    log.warning("eval.%s is no longer used and is ignored; see %s", key, instead)
        return data

    @model_validator(mode="after")
    def _checked(self) -> EvalConfig:
        if self.selection_seeds is not None and set(self.selection_seeds) & set(self.seeds):
            both = sorted(set(self.selection_seeds) & set(self.seeds))
            raise ValueError(f"selection_seeds {both} are also in eval.seeds; the two sets must be disjoint "
                             "(leave selection_seeds unset to derive them)")
        if self.plateau_smoothing % 2 == 0:
            raise ValueError(f"plateau_smoothing must be odd (a centered window), got {self.plateau_smoothing}")
        if self.tagger is None and (self.traits is not None or self.trait_leak):
            raise ValueError("eval.traits / eval.trait_leak need eval.tagger (a WD1.4 model.onnx, or 'toyworld')")
        return self

    def for_training_seed(self, seed: int) -> EvalConfig:
        """This section with the seeds a run of training seed `seed` is scored on (unchanged
        unless `seeds_follow_training_seed`)."""
        if not self.seeds_follow_training_seed:
            return self
        shift = EVAL_SEED_STRIDE * seed
        return self.model_copy(update={"seeds": [s + shift for s in self.seeds],
                                       "selection_seeds": [s + shift for s in self.selection()]})

    def selection(self) -> list[int]:
        """The selection seeds: as given, or as many as `seeds`, numbered after the largest."""
        if self.selection_seeds is not None:
            return list(self.selection_seeds)
        start = max(self.seeds) + 1
        return list(range(start, start + len(self.seeds)))


class LoggingConfig(Section):
    runs_dir: str = Field("runs", description="run folders go to <runs_dir>/<experiment>/<run_id>/")
    experiment: str | None = Field(None, description="default: the config file's stem")
    run_id: str | None = Field(None, description="default: a timestamp")
    wandb: bool = Field(True, description="log to Weights & Biases (offline unless W&B is configured)")
    wandb_project: str | None = Field(None, description="default: $WANDB_PROJECT or 'tiframework'")
    wandb_group: str | None = None
    wandb_tags: list[str] = Field(default_factory=list)
    wandb_job_type: str = "train"
    arm: str | None = Field(None, description="the comparison arm this run belongs to (set by sweeps with `arms:`)")
    progress_bar: bool = True


class ExperimentConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    preview: PreviewConfig = Field(default_factory=PreviewConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    resume: str | None = Field(None, description="an embedding file written by a run; training continues from it")

    @model_validator(mode="after")
    def _stop_needs_eval(self) -> ExperimentConfig:
        if self.training.stop_on_plateau and not self.eval.every:
            raise ValueError("training.stop_on_plateau needs evaluation: set eval.every (and eval.reference)")
        if self.validation.stop_on_plateau and not self.validation.every:
            raise ValueError("validation.stop_on_plateau needs the validation loss: set validation.every")
        return self


def _format_error(err: ValidationError, source: str, overrides: list[str] | None = None) -> str:
    """One line naming each bad key; a key set on the command line is blamed there, not on the file."""
    given = {item.split("=", 1)[0]: item for item in overrides or []}
    in_file, on_line = [], []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = f"unknown key{_did_you_mean(key)}" if e["type"] == "extra_forbidden" else \
            e["msg"].removeprefix("Value error, ")
        text = f"{key}: {msg}" if key else msg
        culprit = next((item for k, item in given.items() if key and (k == key or k.startswith(key + ".")
                                                                      or key.startswith(k + "."))), None)
        if culprit is None:
            in_file.append(text)
        else:
            on_line.append(f"{text} (from {culprit})")
    groups = [f"{source}: " + "; ".join(in_file)] if in_file else []
    return "; ".join(groups + (["command line: " + "; ".join(on_line)] if on_line else []))


def _did_you_mean(key: str) -> str:
    keys = [k for k, _, _ in describe_keys()]
    close = difflib.get_close_matches(key, keys + sorted({k.split(".")[0] for k in keys}), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else " (see `tiframework config keys`)"


def _read_yaml(path: Path, seen: tuple[Path, ...] = (), anchor: bool = True) -> dict[str, Any]:
    """Read a YAML config, resolving `extends:` (a path relative to this file) and, with
    `anchor`, the file's relative input paths (`configpaths.FILE_RELATIVE_KEYS`)."""
    path = path.resolve()
    if path in seen:
        raise UserError(f"{path}: 'extends' forms a cycle")
    data = read_yaml_mapping(path, "config file", "a config must be a mapping of sections")
    base = data.pop("extends", None)
    if anchor:
        data = anchor_paths(data, path.parent)
    if base is None:
        return data
    return deep_merge(_read_yaml(path.parent / base, (*seen, path), anchor), data)


def load_config(path: str | Path | None, overrides: list[str] | None = None, *,
                file_relative: bool = True) -> ExperimentConfig:
    """Load a YAML experiment (or the defaults when `path` is None) and apply overrides. Relative
    input paths in the file are relative to it (`configpaths`) unless `file_relative=False`
    (a run folder's saved config: its paths stand as the run used them)."""
    data = _read_yaml(Path(path), anchor=file_relative) if path else {}
    data = deep_merge(data, parse_overrides(overrides or []))
    if path and not (data.get("logging") or {}).get("experiment"):
        data.setdefault("logging", {})["experiment"] = Path(path).stem
    return config_from_dict(data, source=str(path) if path else "config", overrides=overrides)


def config_from_dict(data: dict[str, Any], source: str = "config",
                     overrides: list[str] | None = None) -> ExperimentConfig:
    """Validate `data`; `overrides` (the command line's key=value items) are blamed for their keys."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise UserError(_format_error(err, source, overrides)) from None


def with_overrides(cfg: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
    """A copy of `cfg` with dotted-key overrides applied (sweeps use this)."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        set_dotted(nested, key, value)
    return config_from_dict(deep_merge(cfg.model_dump(), nested))


def to_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    atomic_write_text(path, to_yaml(cfg))


def describe_keys(model: type[BaseModel] = ExperimentConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every leaf key: the text of `tiframework config keys`."""
    rows = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe_keys(ann, f"{prefix}{name}."))
            continue
        default = field.default_factory() if field.default_factory else field.default
        rows.append((f"{prefix}{name}", repr(default), field.description or ""))
    return rows
