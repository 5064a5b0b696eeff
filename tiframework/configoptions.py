"""Config fields of the training options the peers have (loss weighting, norm control, EMA,
validation loss), kept out of `config.py` so each concern stays a screenful.

`config.TrainingConfig` and `config.EmbeddingConfig` inherit these fields, so the keys read
`training.loss_weighting`, `embedding.norm_control`, ... as one flat section each; the
validation loss is its own section, `validation.*`. Which peer each option comes from is
in the README's feature list.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# OneTrainer's mask-file naming: `<image stem>-masklabel.png` (`training.mask_suffix`, `lint --mask-suffix`).
MASK_SUFFIX = "-masklabel.png"


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LossOptions(Options):
    """How the per-sample diffusion loss is measured and weighted (`training.loss`)."""

    loss_weighting: Literal["constant", "min_snr", "debiased", "p2"] = Field(
        "constant", description="timestep weight of each sample's loss: constant (A1111, diffusers), min_snr "
        "(min(SNR, snr_gamma)/SNR; kohya, OneTrainer), debiased (1/sqrt(SNR); kohya, OneTrainer) or p2 "
        "(1/(p2_k + SNR)^p2_gamma; OneTrainer); for v-prediction models times SNR/(SNR+1) (README)",
    )
    snr_gamma: float = Field(5.0, gt=0, description="gamma of min_snr weighting (5 in the Min-SNR paper)")
    p2_k: float = Field(1.0, gt=0, description="k of p2 weighting")
    p2_gamma: float = Field(1.0, ge=0, description="gamma of p2 weighting (0 = constant)")
    loss_type: Literal["mse", "huber", "smooth_l1"] = Field(
        "mse", description="distance between prediction and target: mse, huber (pseudo-Huber, "
        "2c(sqrt(d^2+c^2)-c)) or smooth_l1 (quadratic below c, linear above), c = huber_c (kohya)",
    )
    huber_c: float = Field(0.1, gt=0, description="the Huber / smooth-L1 transition c")
    noise_offset: float = Field(0.0, ge=0, description="add this times a per-channel N(0,1) offset to the "
                                "training noise (kohya's noise offset; 0 = off)")
    masked_loss: Literal["none", "alpha", "file", "auto"] = Field(
        "none", description="weight each pixel's loss by a mask: alpha (the image's alpha channel; A1111's "
        "'use PNG alpha channel as loss weight'), file (the mask image <stem><mask_suffix> beside it, white = "
        "learn; OneTrainer's masked training), auto (the mask file if there is one, else the alpha channel); "
        "an image without a mask trains on all of it",
    )
    mask_suffix: str = Field(MASK_SUFFIX, min_length=1, description="a mask file's name is the image's stem "
                             "plus this (OneTrainer's); such files are never trained on as images")
    unmasked_weight: float = Field(0.0, ge=0, le=1, description="loss weight outside the mask (0 = ignored, "
                                   "1 = the mask does nothing; OneTrainer's unmasked weight)")
    normalize_masked_area: bool = Field(True, description="divide each image's masked loss by its weighted area, "
                                        "so a small mask does not shrink the loss (OneTrainer's); false: the "
                                        "mean over all pixels (A1111's alpha weight)")


class EMAOptions(Options):
    """An exponential moving average of the trained vectors (`training.ema_*`)."""

    ema_decay: float = Field(0.0, ge=0, lt=1, description="EMA of the vectors with this decay (OneTrainer); "
                             "0 = off. When on, saved embeddings and evaluations are of the EMA vectors; the raw "
                             "vectors go on training (and are what a resume continues)")
    ema_every: int = Field(1, ge=1, description="update the EMA every N optimizer steps")
    ema_warmup: int = Field(0, ge=0, description="the EMA copies the vectors for the first N steps, then averages")


class NormOptions(Options):
    """How a new embedding starts and how its vectors' size is held (`embedding.*`)."""

    init: Literal["text", "random", "zeros"] = Field(
        "text", description="text: init_text's token vectors spread over the vectors (A1111); random: "
        "N(0, vocabulary std); zeros",
    )
    norm_control: Literal["none", "project", "decay", "retract", "init_l2"] = Field(
        "none", description="after each step: project each vector to norm_target (OneTrainer's "
        "preserve_embedding_norm), decay its norm towards norm_target at min(1, norm_decay_rate x lr) (lora's "
        "clip_ti_decay), retract (diffusers' advanced script: scale by (vocab std / std)^0.1 when the std "
        "is over 10x the vocabulary's); or init_l2: add init_l2_weight x mean squared distance to the "
        "init vectors to the loss (the TI paper's regulariser)",
    )
    norm_target: float | None = Field(None, gt=0, description="target L2 norm for project / decay; default: the "
                                      "vocabulary's median norm (project), 0.4 (decay, as lora)")
    norm_decay_rate: float = Field(100.0, gt=0, description="decay: the step's pull is min(1, rate x lr)")
    init_l2_weight: float = Field(0.01, ge=0, description="init_l2: weight of the distance-to-init term")


class ValidationConfig(Options):
    """A held-out loss, scored with fixed noise and timesteps (`validation.*`; kohya's validation)."""

    every: int = Field(0, ge=0, description="score the validation loss every N steps (and at 0); 0 = off")
    path: str | None = Field(None, description="a separate folder of captioned images to score; default: "
                             "a split of data.path")
    split: float = Field(0.1, ge=0, lt=1, description="without path: this share of data.path's images is "
                         "held out of training and scored (at least one image)")
    timesteps: list[int] = Field(default_factory=lambda: [200, 400, 600, 800], min_length=1,
                                 description="the fixed timesteps each image is scored at (kohya's)")
    stop_on_plateau: bool = Field(False, description="stop training when the validation loss plateaus (the "
                                  "plateau detector of eval.plateau_z / _patience / _smoothing, paired over "
                                  "the fixed image x timestep scores); the summary gets val_plateau_step either way")
    seed: int = Field(0, description="the fixed noise's seed")
