"""Training behaviour on the tiny preset (CPU, a few steps each)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image

from runs import make_dataset
from runs import shrunk_quickstart as config
from tiframework.config import load_config
from tiframework.errors import UserError
from tiframework.training.train import train


def vectors_of(path: str) -> torch.Tensor:
    from tiframework.sd.embeddings import load_embedding

    return load_embedding(path).vectors


def test_only_the_new_vectors_change(tmp_path, make_tiny_parts):
    parts = make_tiny_parts()
    before = {f"{name}.{k}": v.clone() for name, m in
              [("unet", parts.unet), ("vae", parts.vae), ("text", parts.text_encoder)]
              for k, v in m.state_dict().items()}
    summary = train(config(tmp_path, "training.max_steps=4"), parts=parts)
    after = {f"{name}.{k}": v for name, m in
             [("unet", parts.unet), ("vae", parts.vae), ("text", parts.text_encoder)]
             for k, v in m.state_dict().items()}
    after = {k.replace("token_embedding.base.", "token_embedding."): v for k, v in after.items()}
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []
    init = vectors_of(str(Path(summary["run_dir"]) / "embeddings" / "kiri_ti.pt"))
    from tiframework.sd.embeddings import create

    start = create(config(tmp_path).embedding, parts).vectors
    assert not torch.equal(init, start)  # ...while the embedding did learn


def test_state_dict_holds_only_the_vectors(tiny_parts, tmp_path):
    from tiframework.training.module import TextualInversionModule

    cfg = config(tmp_path)
    module = TextualInversionModule(cfg, tiny_parts, torch.zeros(4, tiny_parts.width))
    assert list(module.state_dict()) == ["vectors"]
    assert [n for n, p in module.named_parameters()] == ["vectors"]


def test_accumulation_counts_optimizer_steps(tmp_path, make_tiny_parts):
    seen = []

    import pytorch_lightning as pl

    class Count(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append(len(batch["prompts"]))

    cfg = config(tmp_path, "training.max_steps=4", "training.accumulate=3", "training.batch_size=2",
                 "training.save_every=2")
    summary = train(cfg, parts=make_tiny_parts(), extra_callbacks=[Count()])
    assert len(seen) == 12  # 4 optimizer steps x 3 micro-batches
    assert summary["final_step"] == 4
    rows = list(csv.DictReader(open(Path(summary["run_dir"]) / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    saved = sorted(p.name for p in (Path(summary["run_dir"]) / "embeddings").glob("kiri_ti-*.pt"))
    assert saved == ["kiri_ti-2.pt", "kiri_ti-4.pt"]
    from tiframework.sd.embeddings import load_embedding

    assert load_embedding(Path(summary["run_dir"]) / "embeddings" / "kiri_ti-2.pt").step == 2


def test_resume_is_exact(tmp_path, make_tiny_parts):
    """8 steps straight give the same vectors as 4 steps plus a resume for 4 (the rate changes
    after the resume point; accumulation, random latents and tag dropout replay their draws)."""
    common = ["training.learning_rate=0.05:6, 0.01", "training.accumulate=2", "training.batch_size=2",
              "training.save_every=4", "data.latent_sampling=random", "data.tag_dropout=0.2"]
    straight = train(config(tmp_path, "training.max_steps=8", "logging.run_id=straight", *common),
                     parts=make_tiny_parts())
    half = train(config(tmp_path, "training.max_steps=4", "logging.run_id=half", *common),
                 parts=make_tiny_parts())
    resumed = train(config(tmp_path, "training.max_steps=8", "logging.run_id=resumed",
                           f"resume={half['embedding']}", *common), parts=make_tiny_parts())
    assert resumed["final_step"] == 8
    assert torch.equal(vectors_of(straight["embedding"]), vectors_of(resumed["embedding"]))
    # Without the optimizer state the run differs: the test would catch a lost .optim file.
    Path(half["embedding"] + ".optim").unlink()
    fresh = train(config(tmp_path, "training.max_steps=8", "logging.run_id=fresh",
                         f"resume={half['embedding']}", *common), parts=make_tiny_parts())
    assert not torch.equal(vectors_of(straight["embedding"]), vectors_of(fresh["embedding"]))


def test_an_ema_run_resumes_exactly_solo_and_as_a_member(tmp_path, tiny_parts):
    """The saved file holds the EMA; the trained vectors go beside it in `.optim`, so 2 + 2 steps
    (alone, or the resume as a population member) end where 4 straight steps do."""
    from tiframework.training.population.train import train_population

    ema = ["training.ema_decay=0.5", "training.ema_every=1", "training.ema_warmup=1", "training.save_every=2"]
    straight = train(config(tmp_path, "training.max_steps=4", "logging.run_id=straight", *ema), parts=tiny_parts)
    half = train(config(tmp_path, "training.max_steps=2", "logging.run_id=half", *ema), parts=tiny_parts)
    resumed = train(config(tmp_path, "training.max_steps=4", "logging.run_id=resumed",
                           f"resume={half['embedding']}", *ema), parts=tiny_parts)
    assert torch.equal(vectors_of(straight["embedding"]), vectors_of(resumed["embedding"]))
    member = train_population([config(tmp_path, "training.max_steps=4", "logging.run_id=member",
                                      f"resume={half['embedding']}", *ema)], parts=tiny_parts)[0]
    assert (vectors_of(member["embedding"]) - vectors_of(straight["embedding"])).abs().max() < 1e-5
    # The EMA is not the trained vectors (else the test shows nothing), and both were needed:
    saved = torch.load(half["embedding"] + ".optim", weights_only=True)
    assert not torch.equal(saved["trained_vectors"], vectors_of(half["embedding"]))


def test_resume_mismatch_is_an_error(tmp_path, tiny_parts):
    first = train(config(tmp_path, "training.max_steps=2"), parts=tiny_parts)
    with pytest.raises(UserError, match="vectors_per_token"):
        train(config(tmp_path, "training.max_steps=4", "embedding.vectors_per_token=5",
                     f"resume={first['embedding']}"), parts=tiny_parts)
    with pytest.raises(UserError, match="already at step 2"):
        train(config(tmp_path, "training.max_steps=2", f"resume={first['embedding']}"), parts=tiny_parts)


def test_nan_loss_stops_and_keeps_last_good(tmp_path, make_tiny_parts, monkeypatch):
    from tiframework.training.module import TextualInversionModule

    real = TextualInversionModule.noise_loss

    def poisoned(self, batch):
        loss = real(self, batch)
        return loss * float("nan") if self.step >= 3 else loss

    monkeypatch.setattr(TextualInversionModule, "noise_loss", poisoned)
    summary = train(config(tmp_path, "training.max_steps=10"), parts=make_tiny_parts())
    assert summary["stopped"] == "non-finite loss at step 3"
    assert summary["final_step"] == 3
    assert torch.isfinite(vectors_of(summary["embedding"])).all()


def test_bad_images_are_skipped_and_empty_dataset_is_an_error(tmp_path, tiny_parts, caplog):
    data = make_dataset(tmp_path / "data", n=3)
    (data / "zero.png").write_bytes(b"")
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (data / "nocap.png").write_bytes((data / "00.png").read_bytes())
    summary = train(config(tmp_path, "training.max_steps=1"), parts=tiny_parts)
    assert summary["final_step"] == 1
    assert "zero.png" in caplog.text and "broken.png" in caplog.text and "nocap.png" in caplog.text
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "zero.png").write_bytes(b"")
    with pytest.raises(UserError, match="no readable images"):
        train(config(tmp_path, f"data.path={empty}"), parts=tiny_parts)


def test_non_utf8_caption_is_an_error(tmp_path, tiny_parts):
    data = make_dataset(tmp_path / "data", n=2)
    (data / "01.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(UserError, match="01.txt"):
        train(config(tmp_path), parts=tiny_parts)


def test_run_folder_contents(tmp_path, tiny_parts):
    summary = train(config(tmp_path, "training.max_steps=2", "preview.every=2", "preview.steps=2",
                           "preview.prompts=[\"[name]\", \"1girl, [name]\"]"), parts=tiny_parts)
    run = Path(summary["run_dir"])
    assert (run / "config.yaml").is_file() and (run / "summary.json").is_file()
    names = sorted(p.name for p in (run / "previews").iterdir())
    assert names == ["step-000000-0.png", "step-000000-1.png", "step-000002-0.png", "step-000002-1.png",
                     "strip-0.png", "strip-1.png"]
    strip = Image.open(run / "previews" / "strip-0.png")
    seeds = len(load_config(run / "config.yaml").preview.seeds)
    assert strip.width == 2 * seeds * tiny_parts.native_size  # steps 0 and 2 side by side, each all seeds
    reloaded = load_config(run / "config.yaml")
    assert reloaded.training.max_steps == 2
