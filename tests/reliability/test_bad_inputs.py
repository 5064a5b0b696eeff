"""The bad-input corpus: every way a newcomer's input can be wrong that we have met, each
answered by exactly one clear line (naming the file or the config key) and losing nothing.

`CORPUS` lists every case; the README's Reliability section states its size (checked below),
so a fix that adds a case here shows up there. "Loses nothing": every file that existed
before is unchanged, nothing half-written is left, and a failure before training starts
creates no run folder. Images that are unusual but valid (CMYK, 16-bit, paletted) are not
errors: they train with the right colours, and no line is printed for them.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reliability import CORPUS, assert_nothing_lost, cases, error_line, one_line, snapshot, tif
from runs import QUICKSTART, make_dataset, shrink_overrides
from runs import shrunk_quickstart as config
from tiframework.config import load_config
from tiframework.data.images import read_image
from tiframework.errors import UserError
from tiframework.sd.embeddings import Embedding, save_embedding
from tiframework.sd.tokenizer import clip_tokenizer
from tiframework.training.train import train

# ------------------------------------------------------------------ images in a dataset

BROKEN_IMAGES = cases({
    "zero-byte image": "an empty .png",
    "truncated image": "a .png cut in half (the header reads, the pixels do not)",
    "decompression-bomb image": "a 9000x9000 .png of ~80 KB: refused from its header",
})
ODD_IMAGES = cases({
    "CMYK image": "a CMYK .jpg",
    "16-bit image": "a 16-bit greyscale .png (PIL alone would make it white)",
    "paletted image": "a paletted .png with a transparent colour",
})


def write_image(kind: str, folder: Path) -> Path:
    if kind == "zero-byte image":
        path = folder / "odd.png"
        path.write_bytes(b"")
    elif kind == "truncated image":
        path = folder / "odd.png"
        noise = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(noise).save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "decompression-bomb image":
        path = folder / "odd.png"
        Image.new("L", (9000, 9000)).save(path)
    elif kind == "CMYK image":
        path = folder / "odd.jpg"
        Image.new("CMYK", (64, 64), (0, 255, 0, 0)).save(path, quality=95)
    elif kind == "16-bit image":
        path = folder / "odd.png"
        Image.fromarray(np.full((64, 64), 32768, dtype=np.uint16)).save(path)
    else:
        path = folder / "odd.png"
        image = Image.new("P", (64, 64), 1)
        image.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
        image.paste(0, (0, 0, 32, 64))  # the left half uses the transparent colour
        image.save(path, transparency=0)
    path.with_suffix(".txt").write_text("1girl, solo", encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", BROKEN_IMAGES)
def test_a_broken_image_is_skipped_with_one_line(tmp_path, tiny_parts, caplog, kind):
    data = make_dataset(tmp_path / "data", n=3)
    odd = write_image(kind, data)
    before = snapshot(data)
    with caplog.at_level(logging.WARNING):
        summary = train(config(tmp_path, "training.max_steps=1"), parts=tiny_parts)
    lines = [r for r in caplog.records if odd.name in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    one_line(lines[0].getMessage(), re.escape(str(odd)))
    assert summary["final_step"] == 1 and len(summary["skipped_images"]) == 1  # the others trained
    assert_nothing_lost(data, before)


@pytest.mark.parametrize("kind", ODD_IMAGES)
def test_an_unusual_image_trains_with_the_right_colours(tmp_path, tiny_parts, caplog, kind):
    data = make_dataset(tmp_path / "data", n=3)
    odd = write_image(kind, data)
    before = snapshot(data)
    with caplog.at_level(logging.WARNING):
        summary = train(config(tmp_path, "training.max_steps=1"), parts=tiny_parts)
    assert not [r for r in caplog.records if odd.name in r.getMessage()]
    assert summary["skipped_images"] == []
    pixels = np.asarray(read_image(odd), dtype=int)
    if kind == "CMYK image":
        assert np.abs(pixels.mean(axis=(0, 1)) - [255, 0, 255]).max() < 12  # magenta
    elif kind == "16-bit image":
        assert np.abs(pixels - 128).max() <= 1  # mid-grey, not PIL's clipped white
    else:
        assert (pixels[:, :32] == 255).all() and (pixels[:, 32:] == [255, 0, 0]).all()  # transparent -> white
    assert_nothing_lost(data, before)


# ------------------------------------------------------------------ captions, config, schedules

CONFIG_CASES = cases({
    "non-UTF-8 caption": "a caption saved as Latin-1",
    "typo'd config key": "training.max_step=3",
    "typo'd config section": "trainig.max_steps=3",
    "wrongly typed config value": "training.max_steps=abc",
    "wrongly typed list": "eval.seeds=five",
})
EXPECTED = {
    "non-UTF-8 caption": (r"01\.txt: caption is not UTF-8 text \(byte 3\); re-save it as UTF-8",),
    "typo'd config key": (r"training\.max_step: unknown key \(did you mean training\.max_steps\?\)",),
    "typo'd config section": (r"trainig: unknown key \(did you mean training\?\)",),
    "wrongly typed config value": (r"training\.max_steps: .*integer",),
    "wrongly typed list": (r"eval\.seeds: .*list",),
}


@pytest.mark.parametrize("kind", CONFIG_CASES)
def test_a_bad_caption_or_config_value_is_one_line_before_anything_starts(tmp_path, tiny_parts, kind):
    data = make_dataset(tmp_path / "data", n=2)
    before = snapshot(tmp_path)
    with pytest.raises(UserError) as err:
        if kind == "non-UTF-8 caption":
            (data / "01.txt").write_bytes("caf\xe9".encode("latin-1"))
            before = snapshot(tmp_path)
            train(config(tmp_path), parts=tiny_parts)
        else:
            train(config(tmp_path, CORPUS[kind]), parts=tiny_parts)
    one_line(err.value, *EXPECTED[kind])
    assert not (tmp_path / "runs").exists()
    assert_nothing_lost(tmp_path, before)


LR_CASES = cases({f"learning rate {text!r}": text for text in
                  ("fast", "0.01:abc", "-0.01", "nan", "0.01:100, 0.001:50", "0.01:100:200", ", ,", "0.01, 0.001:10")})


@pytest.mark.parametrize("kind", LR_CASES)
def test_a_garbage_learning_rate_is_one_line_naming_the_key(tmp_path, kind):
    with pytest.raises(UserError) as err:
        train(config(tmp_path, f"training.learning_rate={CORPUS[kind]}"))
    one_line(err.value, r"^training\.learning_rate: ", "e.g.|must|increase|positive|last")
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ embedding files given to resume=

class _Plant:
    """Unpickling this would create a file: code, not data."""

    target = ""

    def __reduce__(self):
        return (open, (self.target, "w"))


FILE_CASES = cases({
    "malicious pickle": "a .pt whose pickle calls open()",
    "malicious optimizer state": "a good .pt with a .pt.optim whose pickle calls open()",
    "malicious A1111-era pickle": "a ParameterDict-era .pt that also calls open()",
    "wrong-width embedding": "an SD 1.x (768-wide) embedding for the 32-wide model",
    "NaN embedding": "vectors holding NaN",
    "truncated embedding": "a .pt cut in half",
    "zero-byte embedding": "an empty .pt",
    "garbage PNG embedding": "a .png whose sd-ti-embedding chunk is not the embedding's JSON",
})
FILE_EXPECTED = {
    "malicious pickle": r"bad\.pt: refused to load: the file's pickle asks for '(io|builtins)\.open'",
    "malicious optimizer state": r"kiri_ti-2\.pt\.optim: refused to load",
    "malicious A1111-era pickle": r"bad\.pt: refused to load: the file's pickle asks for '(io|builtins)\.open'",
    "wrong-width embedding": r"bad\.pt: this embedding is for SD 1\.x \(width 768\); the model expects 32",
    "NaN embedding": r"bad\.pt: 1 of its 4 vectors hold NaN/Inf values",
    "truncated embedding": r"bad\.pt: corrupt or truncated",
    "zero-byte embedding": r"bad\.pt: not an embedding file \(an empty file \(0 bytes\)\)",
    "garbage PNG embedding": r"bad\.png: the embedding in its 'sd-ti-embedding' chunk is not valid",
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, make_tiny_parts) -> Path:
    tmp = tmp_path_factory.mktemp("source")
    summary = train(config(tmp, "training.max_steps=2", "training.save_every=2"), parts=make_tiny_parts())
    return Path(summary["run_dir"]) / "embeddings" / "kiri_ti-2.pt"


def write_bad_file(kind: str, folder: Path, checkpoint: Path) -> Path:
    import peers

    _Plant.target = str(folder / "pwned")
    path = folder / "bad.pt"
    if kind == "malicious pickle":
        torch.save({"string_to_param": {"*": _Plant()}, "name": "kiri_ti", "step": 2}, path)
    elif kind == "malicious optimizer state":
        path = folder / "run" / "embeddings" / "kiri_ti-2.pt"
        path.parent.mkdir(parents=True)
        path.write_bytes(checkpoint.read_bytes())
        path.with_name(path.name + ".optim").write_bytes(pickle.dumps({"hash": _Plant()}, protocol=2))
    elif kind == "malicious A1111-era pickle":
        peers.write_parameterdict_era_pt(path, torch.zeros(4, 32), "kiri_ti", 2, extra={"x": _Plant()})
    elif kind in ("wrong-width embedding", "NaN embedding"):
        vectors = torch.zeros(4, 768) if kind == "wrong-width embedding" else torch.zeros(4, 32)
        vectors[2, 5] = float("nan") if kind == "NaN embedding" else 0.0
        save_embedding(Embedding("kiri_ti", vectors, step=2), path)
    elif kind == "truncated embedding":
        path.write_bytes(checkpoint.read_bytes()[:700])
    elif kind == "zero-byte embedding":
        path.write_bytes(b"")
    else:
        path = folder / "bad.png"
        image, info = peers.a1111_png_with_text(Image.new("RGB", (8, 8), "white"), {"x": 1})
        info.chunks.clear()
        info.add_text(peers.TEXT_CHUNK, "bm90IGpzb24=")  # base64 of "not json"
        image.save(path, pnginfo=info)
    return path


@pytest.mark.parametrize("kind", FILE_CASES)
def test_a_bad_embedding_file_is_one_line_and_never_runs_code(tmp_path, tiny_parts, checkpoint, kind):
    (tmp_path / "files").mkdir()
    bad = write_bad_file(kind, tmp_path / "files", checkpoint)
    before = snapshot(tmp_path / "files")
    with pytest.raises(UserError) as err:
        train(config(tmp_path, f"resume={bad}"), parts=tiny_parts)
    one_line(err.value, FILE_EXPECTED[kind])
    assert not (tmp_path / "files" / "pwned").exists()
    assert not (tmp_path / "runs").exists()
    assert_nothing_lost(tmp_path / "files", before)


# ------------------------------------------------------------------ where outputs go

OUTPUT_CASES = cases({
    "read-only output folder": "logging.runs_dir a folder the user cannot write",
    "disk full while training": "a file-size limit hit by the first checkpoint",
    "disk full while converting": "a file-size limit hit by `embedding convert`",
})


@pytest.mark.slow
@pytest.mark.parametrize("kind", OUTPUT_CASES)
def test_an_unwritable_output_is_one_line_and_loses_nothing(tmp_path, kind):
    args = ["train", str(QUICKSTART), *shrink_overrides(tmp_path), "data.cache_dir=null", "training.max_steps=2",
            "training.save_every=2"]
    before = snapshot(tmp_path)
    if kind == "read-only output folder":
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        done = tif(*args, f"logging.runs_dir={locked}", cwd=tmp_path, no_override=True)
        one_line(error_line(done.stderr), rf"^{re.escape(str(locked))}/test: permission denied; fix its permissions")
        assert list(locked.iterdir()) == []
    elif kind == "disk full while training":
        clip_tokenizer()  # its one-time cache (1.6 MB) is not what this case is about
        # 64 vectors: each checkpoint's .optim (two moments, ~17 KB) is the largest file written
        done = tif(*args, "embedding.vectors_per_token=64", cwd=tmp_path, max_file_bytes=12_000)
        one_line(error_line(done.stderr), r"kiri_ti-2\.pt\.optim: cannot write \(a file-size limit was hit\)")
        [run] = (tmp_path / "runs" / "test").iterdir()
        assert load_config(run / "config.yaml", file_relative=False).embedding.vectors_per_token == 64
        assert [p.name for p in (run / "embeddings").iterdir()] == []  # no partial checkpoint
    else:
        src = save_embedding(Embedding("kiri_ti", torch.randn(16, 768)), tmp_path / "big.pt")
        before = snapshot(tmp_path)
        done = tif("embedding", "convert", str(src), str(tmp_path / "out.safetensors"), cwd=tmp_path,
                   max_file_bytes=16_000)
        one_line(error_line(done.stderr), r"out\.safetensors: cannot write \(a file-size limit was hit\)")
        assert not (tmp_path / "out.safetensors").exists()
    assert done.returncode == 2
    assert_nothing_lost(tmp_path, before)
