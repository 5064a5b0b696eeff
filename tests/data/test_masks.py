"""Loss masks through the data pipeline: alpha channels and mask files, cut like the pixels,
area-averaged to the latent grid, batched beside the latents; lint checks mask files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tiframework.config import DataConfig
from tiframework.data.dataset import CaptionedLatents, Item, collate, scan_folder
from tiframework.data.lint import lint_dataset
from tiframework.data.masks import item_masks, latent_mask
from tiframework.errors import UserError


def rgba(path: Path, w: int = 64, h: int = 64, see_through: str = "left") -> Path:
    """Noise pixels; the `see_through` half fully transparent (or "none")."""
    pixels = np.random.default_rng(0).integers(0, 255, (h, w, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    if see_through == "left":
        pixels[:, : w // 2, 3] = 0
    Image.fromarray(pixels, "RGBA").save(path)
    path.with_suffix(".txt").write_text("1girl, solo", encoding="utf-8")
    return path


def mask_png(path: Path, w: int = 64, h: int = 64) -> Path:
    """White top half (learn), black bottom half (ignore)."""
    pixels = np.zeros((h, w), dtype=np.uint8)
    pixels[: h // 2] = 255
    Image.fromarray(pixels, "L").save(path)
    return path


def item(path: Path, size=(64, 64)) -> Item:
    return Item(path, "1girl", size, digest=path.name + str(path.stat().st_mtime_ns))


def test_alpha_and_mask_file_on_the_latent_grid(tmp_path):
    alpha = item(rgba(tmp_path / "a.png"))
    left = torch.zeros(1, 8, 8)
    left[..., 4:] = 1.0  # the transparent left half is ignored
    torch.testing.assert_close(latent_mask(alpha, (8, 8), "alpha", "-masklabel.png"), left)
    assert latent_mask(alpha, (8, 8), "file", "-masklabel.png") is None  # no mask file: learn everything
    assert latent_mask(alpha, (8, 8), "none", "-masklabel.png") is None

    mask_png(tmp_path / "a-masklabel.png")
    top = torch.zeros(1, 8, 8)
    top[:, :4] = 1.0
    fresh = item(tmp_path / "a.png")
    fresh.digest += "-with-file"
    # auto: the mask file wins over the alpha channel
    torch.testing.assert_close(latent_mask(fresh, (8, 8), "auto", "-masklabel.png"), top)
    torch.testing.assert_close(latent_mask(fresh, (8, 8), "file", "-masklabel.png"), top)


def test_a_mask_is_cut_like_its_image_and_area_averaged(tmp_path):
    # A 128x64 image in a 64x64 bucket: cover (64x... -> 128x64 stays) and centre-crop to the
    # middle 64 columns; mask columns 0..63 white, so the crop's left half (image cols 32..63) is in.
    pixels = np.zeros((64, 128), dtype=np.uint8)
    pixels[:, :64] = 255
    Image.fromarray(pixels, "L").save(tmp_path / "w-masklabel.png")
    Image.new("RGB", (128, 64)).save(tmp_path / "w.png")
    got = latent_mask(item(tmp_path / "w.png"), (4, 4), "file", "-masklabel.png")
    want = torch.tensor([1.0, 1.0, 0.0, 0.0]).expand(1, 4, 4)
    torch.testing.assert_close(got, want, atol=0.02, rtol=0)
    # 3 latent columns over 64 pixels: the middle one straddles the edge and gets a share.
    middle = latent_mask(item(tmp_path / "w.png"), (1, 3), "file", "-masklabel.png")
    assert middle[0, 0, 0] > 0.98 and 0.4 < middle[0, 0, 1] < 0.6 and middle[0, 0, 2] < 0.02


def test_a_mask_of_another_shape_is_refused_naming_it(tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "s.png")
    mask_png(tmp_path / "s-masklabel.png", w=64, h=32)
    with pytest.raises(UserError, match=r"s-masklabel\.png: 64x32, but its image s\.png is 64x64"):
        latent_mask(item(tmp_path / "s.png"), (8, 8), "file", "-masklabel.png")
    findings = lint_dataset(tmp_path)
    assert [(f.code, f.file) for f in findings if f.severity == "error"] == [("mask-shape", "s-masklabel.png")]


def test_mask_files_are_not_training_images_and_batches_carry_masks(tmp_path, caplog):
    rgba(tmp_path / "a.png")
    rgba(tmp_path / "b.png", see_through="none")
    mask_png(tmp_path / "b-masklabel.png")
    items, _ = scan_folder(tmp_path, 64, 8, "-masklabel.png")
    assert [it.path.name for it in items] == ["a.png", "b.png"]
    assert len(scan_folder(tmp_path, 64, 8)[0]) == 3  # without the suffix it is just another image
    with caplog.at_level(logging.INFO):
        masks = item_masks(items, [(8, 8)] * 2, "auto", "-masklabel.png")
    assert "2 of 2 images have" in caplog.text
    assert item_masks(items, [(8, 8)] * 2, "alpha", "-masklabel.png")[1] is None  # b is opaque
    means = [torch.zeros(4, 8, 8)] * 2
    data = CaptionedLatents(items, means, means, DataConfig(), ["[name]"], "kiri", 0, masks)
    batch = collate([data[(0, 1)], data[(1, 2)]])
    assert batch["masks"].shape == (2, 1, 8, 8)
    torch.testing.assert_close(batch["masks"][0], masks[0])
    plain = CaptionedLatents(items, means, means, DataConfig(), ["[name]"], "kiri", 0)
    assert "masks" not in collate([plain[(0, 1)]])  # no mask: the batch (and the loss) as before
    # An image without a mask beside a masked one in a batch: all ones.
    partly = CaptionedLatents(items, means, means, DataConfig(), ["[name]"], "kiri", 0, [None, masks[1]])
    assert torch.equal(collate([partly[(0, 1)], partly[(1, 2)]])["masks"][0], torch.ones(1, 8, 8))


def test_lint_counts_mask_files_as_masks_and_names_the_alpha_option(tmp_path):
    rgba(tmp_path / "a.png")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "b.txt").write_text("1girl", encoding="utf-8")
    mask_png(tmp_path / "b-masklabel.png")
    findings = lint_dataset(tmp_path, min_side=8)
    assert {f.file for f in findings} == {"a.png"}  # the mask file is not an uncaptioned image
    (alpha,) = findings
    assert alpha.code == "transparency" and "training.masked_loss=alpha" in alpha.message


def test_an_edited_mask_file_is_read_again_in_the_same_process(tmp_path):
    # A sweep worker keeps masks in memory across trials: the key is the mask file's bytes.
    Image.new("RGB", (64, 64)).save(tmp_path / "e.png")
    mask_png(tmp_path / "e-masklabel.png")
    it = item(tmp_path / "e.png")
    assert float(latent_mask(it, (8, 8), "file", "-masklabel.png").mean()) == pytest.approx(0.5)
    Image.new("L", (64, 64), 255).save(tmp_path / "e-masklabel.png")  # now all white
    assert float(latent_mask(it, (8, 8), "file", "-masklabel.png").mean()) == pytest.approx(1.0)
