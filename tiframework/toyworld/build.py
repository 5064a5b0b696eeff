"""`tiframework toyworld build`: data and every toy model from seeds, within a time budget.

Phases share one wall-clock budget in fixed fractions; each phase trains until its
share is spent, so a longer budget buys more steps, never a different recipe.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tiframework.fileio import atomic_dir
from tiframework.sd.tokenizer import MAX_LENGTH, write_tokenizer_files
from tiframework.toyworld.characters import character_images
from tiframework.toyworld.classifier import (
    AttributeClassifier,
    attribute_accuracy,
    heldout_accuracy,
    save_classifier,
    train_classifier,
)
from tiframework.toyworld.clip import save_clip, train_clip
from tiframework.toyworld.draw import render
from tiframework.toyworld.nets import BUCKET_STEP, NATIVE_SIZE, SCHEDULER_CONFIG, verify_weights
from tiframework.toyworld.train_sd import train_diffusion, train_vae

WEIGHTS_DIR = Path(__file__).parent / "weights"
SHARES = {"vae": 0.14, "diffusion": 0.66, "classifier": 0.12, "clip": 0.07}


@dataclass
class BuildReport:
    seed: int
    budget_minutes: float
    machine: str = field(default_factory=lambda: f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
                         f"{'CUDA' if torch.cuda.is_available() else 'CPU only'}")
    phases: dict[str, dict] = field(default_factory=dict)

    def record(self, name: str, seconds: float, losses: list[float], **extra) -> None:
        tail = losses[-100:] or [float("nan")]
        self.phases[name] = {"seconds": round(seconds, 1), "steps": len(losses),
                             "first_loss": round(losses[0], 4) if losses else None,
                             "final_loss_mean100": round(sum(tail) / len(tail), 4), **extra}


def _save_half(model, folder: Path) -> None:
    """Save in float32 (so configs say float32 and loaders build float32 models), then
    rewrite the tensors as float16: half the bytes, and transformers' default
    `dtype="auto"` still follows the config rather than the file."""
    model.float().save_pretrained(str(folder), safe_serialization=True)
    for path in folder.glob("*.safetensors"):
        tensors = {k: v.half().contiguous() for k, v in load_file(str(path)).items()}
        save_file(tensors, str(path), metadata={"format": "pt"})


def _save_tokenizer(folder: Path) -> None:
    """vocab.json + merges.txt (2 MB) rather than tokenizer.json (3.6 MB): same tokenizer."""
    write_tokenizer_files(folder)
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, "bos_token": "<|startoftext|>",
              "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
              "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1))


def _save_sd(folder: Path, vae, text_encoder, unet) -> None:
    """A diffusers SD folder; float16 tensors on disk to stay small, float32 configs."""
    _save_half(unet, folder / "unet")
    _save_half(vae, folder / "vae")
    _save_half(text_encoder, folder / "text_encoder")
    _save_tokenizer(folder / "tokenizer")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=1))
    index = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.0",
        "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))
    (folder / "tiframework.json").write_text(json.dumps({"native_size": NATIVE_SIZE, "bucket_step": BUCKET_STEP}))
    # What was written must be what the toyworld preset loads: check before the folder replaces the old one.
    verify_weights(folder)


def _side_models(vae, total: float, seed: int, report: BuildReport):
    """The classifier (with its held-out accuracy) and CLIP: they need only the VAE."""
    t0 = time.monotonic()
    classifier, losses = train_classifier(total * SHARES["classifier"], seed, vae=vae)
    accuracy = heldout_accuracy(classifier, seed + 1, vae=vae)
    report.record("classifier", time.monotonic() - t0, losses, heldout_accuracy_vae_roundtrip=accuracy)
    t0 = time.monotonic()
    clip, losses = train_clip(total * SHARES["clip"], seed)
    report.record("clip", time.monotonic() - t0, losses)
    return classifier, accuracy, clip


def build(out: Path = WEIGHTS_DIR, budget_minutes: float = 50.0, seed: int = 0, threads: int = 0) -> BuildReport:
    """Train VAE, UNet + text encoder, attribute classifier and CLIP; write them to `out`.

    `threads`: torch CPU threads (0: torch's default). On an idle 2-core machine 2 threads
    ran the UNet phase 1.3x faster than 1; on a machine shared with other work, two
    spinning OpenMP threads ran 5-20x slower per step than one (both measured).
    """
    if threads > 0:
        torch.set_num_threads(threads)
    total = budget_minutes * 60
    report = BuildReport(seed=seed, budget_minutes=budget_minutes)
    start = time.monotonic()
    vae, losses = train_vae(total * SHARES["vae"], seed)
    report.record("vae", time.monotonic() - start, losses, scaling_factor=vae.config.scaling_factor)
    # Sequential on purpose: training the classifier/CLIP in a second thread beside the
    # UNet halved the UNet's step rate on the shared 2-core machine (measured).
    t0 = time.monotonic()
    unet, text_encoder, losses = train_diffusion(vae, total * SHARES["diffusion"], seed)
    report.record("diffusion", time.monotonic() - t0, losses)
    classifier, accuracy, clip = _side_models(vae, total, seed, report)
    report.phases["total_seconds"] = {"seconds": round(time.monotonic() - start, 1)}
    with atomic_dir(out) as tmp:
        _save_sd(tmp, vae, text_encoder, unet)
        save_classifier(classifier, tmp / "classifier", {"heldout_accuracy": accuracy})
        save_clip(clip, tmp / "clip")
        (tmp / "build_report.json").write_text(json.dumps(asdict(report), indent=1))
        (tmp / "CARD.md").write_text(card(asdict(report), tmp / "classifier"))
    return report


TI_SECTION = """## Textual inversion on these weights

Not measured yet for this build: run `python -m pytest tests/test_research_check.py` and
`python benchmarks/pruning.py`, then record the numbers here.
"""


def card(report: dict, classifier_dir: Path | None = None) -> str:
    """CARD.md: how the weights were made, their losses and the classifier's accuracy.

    `classifier_dir`: the saved attribute classifier, to add its accuracy on the held-out
    characters' clean renders (the images a TI run's accuracy is judged against).
    """
    phases = report["phases"]
    lines = [
        "# Toy-world weights", "",
        "Made by `tiframework toyworld build --budget-minutes "
        f"{report['budget_minutes']:g} --seed {report['seed']}` on {report['machine']}, "
        f"in {phases['total_seconds']['seconds'] / 60:.1f} minutes. Every image is generated from the seed; "
        "the held-out characters' hair/outfit colour combinations (kiri, sora) are excluded from the VAE, "
        "UNet and text encoder's training data. Tensors are stored as float16 safetensors.", "",
        "| model | what | steps | seconds | first loss | final loss (mean of last 100) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    what = {"vae": "AutoencoderKL, 64x64x3 <-> 16x16x4; L1 + MSE reconstruction (+1e-5 KL)",
            "diffusion": "UNet2DConditionModel + CLIPTextModel (width 64, real CLIP BPE), jointly; "
                         "epsilon MSE on SD's noise schedule, min-SNR-5 weighting, EMA weights shipped",
            "classifier": "attribute CNN, one head per group; summed cross-entropy",
            "clip": "open_clip `tif-toy-clip`; symmetric InfoNCE on image <-> caption"}
    for name, text in what.items():
        p = phases[name]
        lines.append(f"| {name} | {text} | {p['steps']} | {p['seconds']:.0f} | {p['first_loss']} | "
                     f"{p['final_loss_mean100']} |")
    acc = phases["classifier"].get("heldout_accuracy_vae_roundtrip", {})
    lines += ["", "Attribute classifier accuracy on 1024 fresh world images (held-out seed stream, passed "
              "through the VAE as generated images are):", "",
              "| " + " | ".join(acc) + " |", "|" + " --- |" * len(acc),
              "| " + " | ".join(f"{v:.3f}" for v in acc.values()) + " |"]
    if classifier_dir is not None:
        classifier = AttributeClassifier(classifier_dir)
        lines += ["", "On the held-out characters' own images (32 clean renders each, seed 123):", ""]
        for name in ("kiri", "sora"):
            scores = attribute_accuracy([render(a) for a in character_images(name, 32, seed=123)], name, classifier)
            lines.append(f"- {name}: " + ", ".join(f"{g} {v:.2f}" for g, v in scores.items()))
    return "\n".join(lines) + "\n\n" + TI_SECTION


def folder_size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6
