"""`tiframework toyworld build`: data and every toy model from seeds, within a time budget.

Phases share one wall-clock budget in fixed fractions; each phase trains until its
share is spent, so a longer budget buys more steps, never a different recipe.
"""

from __future__ import annotations

import json
import platform
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tiframework.fileio import atomic_dir
from tiframework.toyworld.nets import BUCKET_STEP, NATIVE_SIZE, SCHEDULER_CONFIG

WEIGHTS_DIR = Path(__file__).parent / "weights"
# vae runs first; classifier then clip run beside diffusion, so their shares overlap it.
SHARES = {"vae": 0.15, "diffusion": 0.83, "classifier": 0.45, "clip": 0.33}


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
    from safetensors.torch import load_file, save_file

    model.float().save_pretrained(str(folder), safe_serialization=True)
    for path in folder.glob("*.safetensors"):
        tensors = {k: v.half().contiguous() for k, v in load_file(str(path)).items()}
        save_file(tensors, str(path), metadata={"format": "pt"})


def _save_tokenizer(folder: Path) -> None:
    """vocab.json + merges.txt (2 MB) rather than tokenizer.json (3.6 MB): same tokenizer."""
    from tiframework.tokenizer import MAX_LENGTH, write_tokenizer_files

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


def _side_models(vae, total: float, seed: int, report: BuildReport, out: dict) -> None:
    from tiframework.toyworld.classifier import heldout_accuracy, train_classifier
    from tiframework.toyworld.clip import train_clip

    try:
        t0 = time.monotonic()
        out["classifier"], losses = train_classifier(total * SHARES["classifier"], seed, vae=vae)
        out["accuracy"] = heldout_accuracy(out["classifier"], seed + 1, vae=vae)
        report.record("classifier", time.monotonic() - t0, losses, heldout_accuracy_vae_roundtrip=out["accuracy"])
        t0 = time.monotonic()
        out["clip"], losses = train_clip(total * SHARES["clip"], seed)
        report.record("clip", time.monotonic() - t0, losses)
    except Exception as exc:  # re-raised in the main thread
        out["error"] = exc


def build(out: Path = WEIGHTS_DIR, budget_minutes: float = 45.0, seed: int = 0, threads: int = 1) -> BuildReport:
    """Train VAE, UNet + text encoder, attribute classifier and CLIP; write them to `out`.

    `threads`: torch CPU threads. 1 is the default because on a shared 2-core machine
    two spinning OpenMP threads ran 5-20x slower per step than one (measured).
    """
    if threads > 0:
        torch.set_num_threads(threads)
    from tiframework.toyworld.classifier import save_classifier
    from tiframework.toyworld.clip import save_clip
    from tiframework.toyworld.train_sd import train_diffusion, train_vae

    total = budget_minutes * 60
    report = BuildReport(seed=seed, budget_minutes=budget_minutes)
    start = time.monotonic()
    vae, losses = train_vae(total * SHARES["vae"], seed)
    report.record("vae", time.monotonic() - start, losses, scaling_factor=vae.config.scaling_factor)
    # The classifier and CLIP need only the VAE: they train in a second thread beside the
    # UNet (one torch thread each), which uses a second core where one is free.
    side: dict = {}
    thread = threading.Thread(target=_side_models, args=(vae, total, seed, report, side))
    thread.start()
    t0 = time.monotonic()
    unet, text_encoder, losses = train_diffusion(vae, total * SHARES["diffusion"], seed)
    report.record("diffusion", time.monotonic() - t0, losses)
    thread.join()
    if "error" in side:
        raise side["error"]
    report.phases["total_seconds"] = {"seconds": round(time.monotonic() - start, 1)}
    with atomic_dir(out) as tmp:
        _save_sd(tmp, vae, text_encoder, unet)
        save_classifier(side["classifier"], tmp / "classifier", {"heldout_accuracy": side["accuracy"]})
        save_clip(side["clip"], tmp / "clip")
        (tmp / "build_report.json").write_text(json.dumps(asdict(report), indent=1))
    return report


def folder_size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6
