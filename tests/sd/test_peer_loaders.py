"""Every file we write, handed to each peer's loader (as `tests/helpers/peers.py` restates it),
and the A1111 files we read: ParameterDict-era `.pt` and both PNG encodings.

The peers: A1111's safe unpickler (older and newer zip allow-lists, allowed globals) and its
embedding loader, ComfyUI's `load_embed`, kohya's `load_weights`; diffusers' own
`load_textual_inversion` is tested in test_embeddings.py and below on training output.
"""

from __future__ import annotations

import logging
import os
import pickle
import stat
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

import peers
from runs import shrunk_quickstart
from tiframework.errors import UserError
from tiframework.sd.embeddings import Embedding, load_embedding, save_embedding
from tiframework.sd.optimizer_state import a1111_checksum, load_optimizer_state, save_optimizer_state
from tiframework.sd.torchfiles import ADMITTED_ENTRY

FORMATS = [("a1111-pt", "kiri_ti-40.pt"), ("a1111-safetensors", "kiri_ti-40.safetensors"),
           ("diffusers", "kiri_ti-40.safetensors"), ("diffusers", "kiri_ti-40.bin")]
FORMAT_IDS = ["a1111-pt", "a1111-safetensors", "diffusers-safetensors", "diffusers-bin"]
SD_WIDTH = 768


def vectors(vpt: int, width: int = SD_WIDTH, seed: int = 0) -> torch.Tensor:
    return torch.randn(vpt, width, generator=torch.Generator().manual_seed(seed)) * 0.02


@pytest.mark.parametrize("vpt", [1, 2, 16])
@pytest.mark.parametrize(("fmt", "filename"), FORMATS, ids=FORMAT_IDS)
def test_every_format_loads_in_every_peer(tmp_path, fmt, filename, vpt):
    vec = vectors(vpt)
    path = save_embedding(Embedding("kiri_ti-40", vec, step=40, sd_checkpoint="0123456789",
                                    sd_checkpoint_name="nai"), tmp_path / filename, fmt)
    if path.suffix in (".pt", ".bin"):
        names = zipfile.ZipFile(path).namelist()
        assert all(ADMITTED_ENTRY.match(n) for n in names), names
        peers.a1111_check(path, newer=False)
        peers.a1111_check(path, newer=True)

    a1111 = peers.a1111_load(path, SD_WIDTH)
    assert torch.equal(a1111["vec"], vec) and not a1111["skipped"]
    assert a1111["name"] == "kiri_ti-40"  # A1111 names it after the file
    if fmt == "a1111-pt":
        assert (a1111["step"], a1111["sd_checkpoint_name"]) == (40, "nai")

    comfy = peers.comfy_load_embed(path, SD_WIDTH)
    assert peers.comfy_usable(comfy, SD_WIDTH) and torch.equal(comfy.reshape(-1, SD_WIDTH), vec)
    assert torch.equal(peers.kohya_load_weights(path), vec)
    assert torch.equal(load_embedding(path).vectors, vec)


def test_a_plain_torch_save_is_what_a1111_refuses(tmp_path):
    # The check is live: the file torch.save writes today fails both allow-lists, and
    # a pickle naming a forbidden global fails even with clean zip entries.
    torch.save({"string_to_param": {"*": vectors(2)}}, tmp_path / "plain.pt")
    with pytest.raises(peers.A1111Refused, match=r"bad file inside .*\.format_version"):
        peers.a1111_check(tmp_path / "plain.pt", newer=True)
    with pytest.raises(peers.A1111Refused, match="bad file inside"):
        peers.a1111_check(tmp_path / "plain.pt", newer=False)

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(peers.A1111Refused, match="forbidden"):
        peers.a1111_check(tmp_path / "evil.pt", newer=True)


def test_pickles_load_with_mmap_and_in_comfyui_fallback(tmp_path):
    path = save_embedding(Embedding("x", vectors(16)), tmp_path / "x.pt")
    data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # needs aligned records
    assert torch.equal(data["string_to_param"]["*"], vectors(16))
    assert torch.equal(peers._comfy_raw_zip(path), vectors(16))  # ComfyUI's raw-record fallback


# ------------------------------------------------------------------ what a training run writes


@pytest.fixture(scope="module")
def trained(tmp_path_factory, make_tiny_parts):
    from tiframework.training.train import train

    tmp = tmp_path_factory.mktemp("run")
    old = os.umask(0o022)
    try:
        summary = train(shrunk_quickstart(tmp, "training.max_steps=4", "training.save_every=2"),
                        parts=make_tiny_parts())
    finally:
        os.umask(old)
    return Path(summary["run_dir"]) / "embeddings"


def test_training_files_pass_a1111_and_carry_its_names_and_hashes(trained):
    files = {p.name for p in trained.iterdir()}
    assert files == {f"kiri_ti{s}.{ext}" for s in ("", "-2", "-4") for ext in ("pt", "pt.optim", "safetensors")}
    for step, stem in ((2, "kiri_ti-2"), (4, "kiri_ti-4"), (4, "kiri_ti")):
        pt = trained / f"{stem}.pt"
        for path in (pt, trained / f"{stem}.pt.optim"):
            peers.a1111_check(path, newer=False)
            peers.a1111_check(path, newer=True)
        theirs = peers.a1111_load(pt, 32)
        ours = load_embedding(pt)
        assert (ours.name, ours.step) == (stem, step)  # the final file keeps the plain name
        state = peers.a1111_resume_optimizer(pt, theirs["vec"])  # A1111 finds the hash matching
        assert state is not None and set(state) == {"state", "param_groups"}
        assert load_optimizer_state(pt, ours.vectors, ours.step) is not None


def test_training_files_follow_the_umask(trained):
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in trained.iterdir()}
    assert set(modes.values()) == {0o644}, modes
    assert stat.S_IMODE(trained.stat().st_mode) == 0o755


def test_two_checkpoints_of_one_run_load_into_one_diffusers_pipeline(trained, make_tiny_parts):
    from test_embeddings import _pipeline_with_fresh_text_side

    pipe = _pipeline_with_fresh_text_side(make_tiny_parts())
    for stem in ("kiri_ti-2", "kiri_ti-4", "kiri_ti"):  # each file's own token, no token= needed
        pipe.load_textual_inversion(str(trained / f"{stem}.pt"))
    vocab = pipe.tokenizer.get_vocab()
    assert {"kiri_ti-2", "kiri_ti-4", "kiri_ti"} <= set(vocab)


# ------------------------------------------------------------------ the optimizer state


def test_checksum_is_a1111s(tmp_path):
    for vpt, width in ((1, 768), (2, 64), (16, 32)):
        vec = vectors(vpt, width, seed=vpt)
        assert a1111_checksum(vec) == peers.a1111_checksum(vec)
    assert a1111_checksum(torch.zeros(4, 8)) == "0000"
    assert a1111_checksum(vectors(2)) != a1111_checksum(vectors(2) + 0.05)


def _moments(state: dict | None) -> torch.Tensor | None:
    return None if state is None else state["state"][0]["exp_avg"]


def test_optimizer_state_hash_mismatch_warns_and_starts_fresh(tmp_path, caplog):
    vec = vectors(2, 32)
    pt = save_embedding(Embedding("x", vec, step=10), tmp_path / "x.pt")
    param = torch.nn.Parameter(vec.clone())
    opt = torch.optim.AdamW([param])
    param.grad = torch.ones_like(param)
    opt.step()
    state = opt.state_dict()
    save_optimizer_state(pt, vec, state, 10)
    assert torch.equal(_moments(load_optimizer_state(pt, vec, 10)), _moments(state))
    with caplog.at_level(logging.WARNING):
        assert load_optimizer_state(pt, vec + 1, 10) is None
    assert "belongs to other vectors" in caplog.text and "zero moments" in caplog.text
    # A1111's own .optim (no step) is taken when the hash matches; a file of ours from
    # before the hash existed, when its step does.
    torch.save({"hash": a1111_checksum(vec), "optimizer_state_dict": state}, pt.with_name("x.pt.optim"))
    assert torch.equal(_moments(load_optimizer_state(pt, vec, 10)), _moments(state))
    torch.save({"step": 10, "optimizer_state_dict": state}, pt.with_name("x.pt.optim"))
    assert torch.equal(_moments(load_optimizer_state(pt, vec, 10)), _moments(state))
    assert load_optimizer_state(pt, vec, 11) is None


# ------------------------------------------------------------------ A1111-era and PNG files


def test_parameterdict_era_pt_is_read_with_a1111s_allow_list(tmp_path):
    vec = vectors(3)
    path = peers.write_parameterdict_era_pt(tmp_path / "old.pt", vec, "oldchar", 500)
    peers.a1111_check(path, newer=False)  # A1111 admits it ...
    with pytest.raises(pickle.UnpicklingError, match="ParameterDict"):
        torch.load(path, weights_only=True)  # ... torch's weights_only loader does not
    emb = load_embedding(path)
    assert torch.equal(emb.vectors, vec)
    assert (emb.name, emb.step, emb.sd_checkpoint_name, emb.file_format) == ("oldchar", 500, "nai", "a1111-pt")


def test_parameterdict_era_pt_with_code_is_refused_not_run(tmp_path):
    planted = tmp_path / "pwned"

    class Plant:
        def __reduce__(self):
            return (open, (str(planted), "w"))

    path = peers.write_parameterdict_era_pt(tmp_path / "evil.pt", vectors(1), "evil", 1, extra={"x": Plant()})
    with pytest.raises(UserError, match=r"evil.pt: refused to load: the file's pickle asks for '(io|builtins).open'"):
        load_embedding(path)
    assert not planted.exists()


def _a1111_data(vec: torch.Tensor, name: str, step: int) -> dict:
    return {"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": name, "step": step,
            "sd_checkpoint": "abc", "sd_checkpoint_name": "nai"}


@pytest.mark.parametrize("vpt", [1, 16])
def test_png_embeddings_in_both_encodings(tmp_path, vpt):
    vec = vectors(vpt)
    picture = Image.new("RGB", (64, 48), (200, 120, 90))
    data = _a1111_data(vec, "pngchar", 250)

    image, info = peers.a1111_png_with_text(picture, data)
    image.save(tmp_path / "text.png", pnginfo=info)
    peers.a1111_png_with_pixels(picture, data).save(tmp_path / "pixels.png")  # chunk stripped, data in pixels

    for name in ("text.png", "pixels.png"):
        assert torch.equal(peers.a1111_load(tmp_path / name, SD_WIDTH)["vec"], vec)  # the fixture is A1111's
        emb = load_embedding(tmp_path / name)
        assert torch.equal(emb.vectors, vec), name
        assert (emb.name, emb.step, emb.file_format) == ("pngchar", 250, "a1111-png")


def test_png_without_embedding_and_png_bombs_are_refused(tmp_path):
    Image.new("RGB", (32, 32), (10, 200, 30)).save(tmp_path / "plain.png")
    with pytest.raises(UserError, match="plain.png: an image without an embedding"):
        load_embedding(tmp_path / "plain.png")
    # pixel data that inflates to far more than any embedding: refused, not inflated
    import zlib

    import numpy as np

    blob = np.frombuffer(zlib.compress(b"[" * (80 << 20), 9), np.uint8)
    h = 64
    size = -(-blob.size // (h * 3)) * h * 3
    noise = peers._lcg_bytes(size) & 0x0F
    low = (np.resize(blob & 0x0F, size) ^ noise).reshape(h, -1, 3)
    high = (np.resize(blob >> 4, size) ^ noise).reshape(h, -1, 3)
    low[low == 0], high[high == 0] = 16, 16  # keep columns lit (the high nibble is ignored)
    canvas = np.zeros((h, low.shape[1] * 2 + 2 + 8, 3), np.uint8)
    canvas[:, : low.shape[1]] = low
    canvas[:, low.shape[1] + 1: low.shape[1] + 9] = 77
    canvas[:, low.shape[1] + 10:] = high
    Image.fromarray(canvas).save(tmp_path / "bomb.png")
    with pytest.raises(UserError, match="bomb.png: the embedding in its pixels inflates beyond"):
        load_embedding(tmp_path / "bomb.png")


def test_every_command_that_reads_embeddings_reads_a1111_files(tmp_path, tiny_parts, capsys):
    import json

    from tiframework.cli import main
    from tiframework.training.train import train

    vec = vectors(4, 32)
    old = peers.write_parameterdict_era_pt(tmp_path / "old.pt", vec, "kiri_ti", 2)
    image, info = peers.a1111_png_with_text(Image.new("RGB", (16, 16), "white"), _a1111_data(vec, "kiri_ti", 2))
    image.save(tmp_path / "kiri_ti.png", pnginfo=info)
    for path, fmt in ((old, "a1111-pt"), (tmp_path / "kiri_ti.png", "a1111-png")):
        assert main(["embedding", "inspect", str(path), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["format"] == fmt
        out = tmp_path / f"{path.stem}-{fmt}.safetensors"
        assert main(["embedding", "convert", str(path), str(out)]) == 0
        assert f"from {path} ({fmt})" in capsys.readouterr().out
        assert torch.equal(load_embedding(out).vectors, vec)
        summary = train(shrunk_quickstart(tmp_path, "training.max_steps=3", f"resume={path}",
                                          f"logging.run_id={fmt}"), parts=tiny_parts)
        assert summary["final_step"] == 3 and summary["resumed_from"]["step"] == 2
