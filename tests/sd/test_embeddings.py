"""Embedding creation, the three file formats, and the `embedding` CLI.

The interoperability test loads every file we write through diffusers' own
`load_textual_inversion` and checks the pipeline encodes a prompt exactly as our
spliced encoder does, i.e. the vectors survive the trip bit for bit.
"""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

from tiframework.cli import main
from tiframework.config import config_from_dict
from tiframework.data.images import captions_by_image
from tiframework.errors import UserError
from tiframework.sd import embeddings as E
from tiframework.sd.embeddings import Embedding, create, init_vectors, load_embedding, save_embedding
from tiframework.sd.text import encode_prompts

# (format, file name): every way we write; diffusers' format as safetensors and as a pickle.
CASES = [
    ("a1111-pt", "emb.pt"),
    ("a1111-safetensors", "emb.safetensors"),
    ("diffusers", "learned_embeds.safetensors"),
    ("diffusers", "learned_embeds.bin"),
]
CASE_IDS = ["a1111-pt", "a1111-safetensors", "diffusers-safetensors", "diffusers-bin"]


def sample_embedding(width: int = 32, n: int = 3) -> Embedding:
    gen = torch.Generator().manual_seed(1)
    vectors = torch.randn(n, width, generator=gen) * 0.3
    return Embedding("zorblax", vectors, step=250, sd_checkpoint="0123456789", sd_checkpoint_name="tiny")


def make(name: str, init_text: str, vpt: int, parts, captions: dict[str, str | None] | None = None):
    """`create` from the values a config file would hold (validated by the schema)."""
    spec = config_from_dict({"embedding": {"name": name, "init_text": init_text, "vectors_per_token": vpt}})
    return create(spec.embedding, parts, captions)


def make_dataset(folder: Path, captions: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, caption in captions.items():
        Image.new("RGB", (16, 16), (200, 120, 90)).save(folder / f"{stem}.png")
        (folder / f"{stem}.txt").write_text(caption, encoding="utf-8")
    return folder


# ------------------------------------------------------------------ formats


@pytest.mark.parametrize(("fmt", "filename"), CASES, ids=CASE_IDS)
def test_round_trip_keeps_vectors_bit_identical(tmp_path, fmt, filename):
    emb = sample_embedding()
    path = save_embedding(emb, tmp_path / filename, fmt)
    back = load_embedding(path)
    assert back.vectors.dtype == torch.float32
    assert torch.equal(back.vectors, emb.vectors)
    assert back.name == emb.name
    assert back.file_format == fmt
    if filename.endswith(".bin"):
        # diffusers' pickled format is exactly {token: vectors}: nowhere to keep the step
        assert back.step == 0
    else:
        assert (back.step, back.sd_checkpoint, back.sd_checkpoint_name) == (250, "0123456789", "tiny")


def test_a1111_pt_layout_is_what_a1111_writes(tmp_path):
    save_embedding(sample_embedding(), tmp_path / "x.pt")
    data = torch.load(tmp_path / "x.pt", weights_only=True)
    assert set(data) == {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint", "sd_checkpoint_name"}
    assert data["string_to_token"] == {"*": 265}
    assert data["string_to_param"]["*"].shape == (3, 32)
    assert (data["name"], data["step"]) == ("zorblax", 250)


def test_a1111_safetensors_layout(tmp_path):
    from safetensors import safe_open

    save_embedding(sample_embedding(), tmp_path / "x.safetensors")
    with safe_open(str(tmp_path / "x.safetensors"), framework="pt") as fh:
        assert list(fh.keys()) == ["emb_params"]
        assert fh.metadata()["name"] == "zorblax" and fh.metadata()["step"] == "250"


@pytest.mark.parametrize(("src_fmt", "src_name"), CASES, ids=CASE_IDS)
def test_conversion_between_all_pairs(tmp_path, src_fmt, src_name):
    emb = sample_embedding()
    src = save_embedding(emb, tmp_path / "src" / src_name, src_fmt)
    for dst_fmt, dst_name in CASES:
        dst = save_embedding(load_embedding(src), tmp_path / dst_fmt / dst_name, dst_fmt)
        back = load_embedding(dst)
        assert torch.equal(back.vectors, emb.vectors), (src_fmt, dst_fmt)
        assert back.name == emb.name and back.file_format == dst_fmt


def test_format_is_detected_by_content_not_extension(tmp_path):
    emb = sample_embedding()
    save_embedding(emb, tmp_path / "real.safetensors")
    (tmp_path / "misnamed.pt").write_bytes((tmp_path / "real.safetensors").read_bytes())
    back = load_embedding(tmp_path / "misnamed.pt")
    assert back.file_format == "a1111-safetensors" and torch.equal(back.vectors, emb.vectors)


def test_format_and_extension_mismatch_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"\.safetensors file name"):
        save_embedding(sample_embedding(), tmp_path / "x.pt", "a1111-safetensors")
    with pytest.raises(UserError, match="cannot tell the embedding format"):
        save_embedding(sample_embedding(), tmp_path / "x.emb")
    assert list(tmp_path.iterdir()) == []


def test_old_single_vector_diffusers_file_loads(tmp_path):
    torch.save({"<cat-toy>": torch.ones(32)}, tmp_path / "learned_embeds.bin")
    emb = load_embedding(tmp_path / "learned_embeds.bin")
    assert (emb.name, emb.n_vectors, emb.width) == ("<cat-toy>", 1, 32)


# ------------------------------------------------------------------ diffusers interop


def _pipeline_with_fresh_text_side(parts):
    """A pipeline over `parts` whose tokenizer and text encoder are private copies.

    `load_textual_inversion` adds tokens and resizes the token table in place; the
    shared tokenizer (`clip_tokenizer()` is process-wide) must not see that.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    text_encoder = copy.deepcopy(parts.text_encoder)
    table = text_encoder.get_input_embeddings()
    if hasattr(table, "base"):  # our prompt splice wraps the table once prompts were encoded
        text_encoder.set_input_embeddings(table.base)
    return StableDiffusionPipeline(
        vae=parts.vae, text_encoder=text_encoder, tokenizer=copy.deepcopy(parts.tokenizer), unet=parts.unet,
        scheduler=DDIMScheduler.from_config(parts.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )


@pytest.mark.parametrize("vpt", [1, 2, 16])
@pytest.mark.parametrize(("fmt", "filename"), CASES, ids=CASE_IDS)
def test_diffusers_load_textual_inversion_uses_exactly_our_vectors(tmp_path, tiny_parts, fmt, filename, vpt):
    emb = sample_embedding(n=vpt)
    path = save_embedding(emb, tmp_path / filename, fmt)
    pipe = _pipeline_with_fresh_text_side(tiny_parts)
    # A1111's safetensors carries its token as the file name (key 'emb_params'), so
    # diffusers users pass token=, exactly as for files from civitai.
    pipe.load_textual_inversion(str(path), token=emb.name if fmt == "a1111-safetensors" else None)
    prompt = f"a drawing of {emb.name}, smiling, outdoors"
    theirs, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
    ours = encode_prompts(tiny_parts, [prompt], name=emb.name, vectors=emb.vectors)
    assert theirs.shape == ours.shape == (1, 77, 32)
    assert torch.equal(theirs, ours)
    # and the embedding matters: without it the prompt encodes differently
    assert not torch.allclose(encode_prompts(tiny_parts, [prompt]), ours)

    # Clip skip 2 through the pipeline's own tokenizer and resized table. (diffusers
    # 0.42's `encode_prompt(clip_skip=...)` reads `text_encoder.text_model`, which
    # transformers 5 no longer has, so we apply the final layer norm ourselves.)
    ids = pipe.tokenizer(pipe.maybe_convert_prompt(prompt, pipe.tokenizer), padding="max_length",
                         max_length=77, truncation=True, return_tensors="pt").input_ids
    hidden = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    theirs_skip2 = getattr(pipe.text_encoder, "text_model", pipe.text_encoder).final_layer_norm(hidden)
    ours_skip2 = encode_prompts(tiny_parts, [prompt], clip_skip=2, name=emb.name, vectors=emb.vectors)
    assert torch.equal(theirs_skip2, ours_skip2)


# ------------------------------------------------------------------ creation


@pytest.mark.parametrize(("n_tokens", "vpt", "expected"), [
    (2, 4, [0, 0, 1, 1]),
    (3, 4, [0, 0, 1, 2]),
    (1, 3, [0, 0, 0]),
    (3, 8, [0, 0, 0, 1, 1, 1, 2, 2]),
    (4, 4, [0, 1, 2, 3]),
])
def test_init_vectors_fill_blocks_like_a1111(n_tokens, vpt, expected):
    rows = torch.arange(n_tokens, dtype=torch.float32)[:, None].expand(n_tokens, 5)
    out = init_vectors(rows, vpt, 5)
    assert out[:, 0].tolist() == [float(i) for i in expected]
    # A1111's create_embedding: vec[i] = embedded[i * n_tokens // vpt]
    assert expected == [i * n_tokens // vpt for i in range(vpt)]


def test_create_uses_frozen_token_rows(tiny_parts):
    table = tiny_parts.text_encoder.get_input_embeddings().weight
    emb = make("zorblax", "red hair", 4, tiny_parts)  # red</w> hair</w>
    red, hair = tiny_parts.tokenizer("red hair", add_special_tokens=False).input_ids
    expected = table[[red, red, hair, hair]]
    assert torch.equal(emb.vectors, expected)
    assert emb.vectors.data_ptr() != table.data_ptr() and not emb.vectors.requires_grad
    assert (emb.name, emb.step, emb.sd_checkpoint_name) == ("zorblax", 0, "tiny")


def test_init_text_with_more_tokens_than_vectors_is_an_error(tiny_parts):
    with pytest.raises(UserError, match=r"is 5 tokens but vectors_per_token is 4.*raise vectors_per_token to 5"):
        make("zorblax", "black hair, red eyes", 4, tiny_parts)


@pytest.mark.parametrize("init_text", ["", "   "])
def test_empty_init_text_gives_zeros(tiny_parts, init_text):
    emb = make("zorblax", init_text, 3, tiny_parts)
    assert torch.equal(emb.vectors, torch.zeros(3, 32))


@pytest.mark.parametrize("name", ["miku", "Miku", "MIKU", " red "])
def test_name_that_is_a_vocabulary_word_is_refused(tiny_parts, name):
    with pytest.raises(UserError, match="already a word in CLIP's vocabulary"):
        make(name, "", 2, tiny_parts)


@pytest.mark.parametrize("name", ["", "  ", "my,char"])
def test_empty_or_comma_names_are_refused(tiny_parts, name):
    with pytest.raises(UserError, match="empty|comma|at least 1 character"):
        make(name, "", 2, tiny_parts)


@pytest.mark.parametrize("vpt", [0, 76])
def test_vectors_per_token_out_of_range(tiny_parts, vpt):
    with pytest.raises(UserError, match="embedding.vectors_per_token"):
        make("zorblax", "", vpt, tiny_parts)


@pytest.mark.parametrize("name", ["1girl", "1GIRL", "1Girl"])
def test_name_that_is_a_dataset_tag_is_refused(tmp_path, tiny_parts, name):
    data = make_dataset(tmp_path / "data", {"a": "solo, smile", "b": "1girl, solo, red eyes"})
    with pytest.raises(UserError, match=r"word of the dataset's captions \(b\."):
        make(name, "", 2, tiny_parts, captions_by_image(data))


def test_name_where_training_would_splice_it_is_refused(tmp_path, tiny_parts):
    # One rule for training, creation and lint (sd.names): "zorblax hat" would train the
    # embedding in place of the caption's word, "zorblax_hat" never splices (one word).
    data = make_dataset(tmp_path / "data", {"a": "1girl, zorblax_hat"})
    assert make("zorblax", "girl", 1, tiny_parts, captions_by_image(data)).n_vectors == 1
    data = make_dataset(tmp_path / "data2", {"a": "1girl, zorblax hat"})
    with pytest.raises(UserError, match=r"word of the dataset's captions \(a\.png\)"):
        make("zorblax", "girl", 1, tiny_parts, captions_by_image(data))


def test_vector_norms(tiny_parts):
    emb = Embedding("x", torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    assert E.vector_norms(emb.vectors) == [5.0, 0.0]


# ------------------------------------------------------------------ hostile and broken files


class _CreatesFile:
    """Unpickling this calls `open(target, 'w')`: code running at load time."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_malicious_pickle_is_refused_not_run(tmp_path):
    planted = tmp_path / "pwned"
    # the payload is live: a plain unpickle does run it
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_CreatesFile(proof))).close()
    assert proof.exists()

    torch.save({"string_to_param": {"*": _CreatesFile(planted)}, "name": "x"}, tmp_path / "evil.pt")
    (tmp_path / "evil_legacy.pt").write_bytes(pickle.dumps({"x": _CreatesFile(planted)}, protocol=2))
    for name in ("evil.pt", "evil_legacy.pt"):
        with pytest.raises(UserError, match=f"{name}: refused to load"):
            load_embedding(tmp_path / name)
    assert not planted.exists()


@pytest.mark.parametrize(("fmt", "filename"), CASES, ids=CASE_IDS)
def test_truncated_file_names_the_file(tmp_path, fmt, filename):
    path = save_embedding(sample_embedding(), tmp_path / filename, fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=f"{filename}: (corrupt or truncated|not an embedding)"):
        load_embedding(path)


def test_garbage_and_missing_files(tmp_path):
    (tmp_path / "notes.pt").write_text("hello, I am not an embedding")
    with pytest.raises(UserError, match="notes.pt: not an embedding file"):
        load_embedding(tmp_path / "notes.pt")
    with pytest.raises(UserError, match="missing.pt: embedding file not found"):
        load_embedding(tmp_path / "missing.pt")


def test_wrong_width_names_the_model_family(tmp_path):
    path = save_embedding(sample_embedding(width=1024), tmp_path / "sd2.pt")
    with pytest.raises(UserError, match=r"this embedding is for SD 2.x \(width 1024\); the model expects 768"):
        load_embedding(path, expected_width=768)
    assert load_embedding(path, expected_width=1024).width == 1024


def test_sdxl_and_multi_token_files_are_explained(tmp_path):
    from safetensors.torch import save_file

    save_file({"clip_g": torch.zeros(2, 1280), "clip_l": torch.zeros(2, 768)}, str(tmp_path / "xl.safetensors"))
    with pytest.raises(UserError, match="SDXL"):
        load_embedding(tmp_path / "xl.safetensors")
    torch.save({"a": torch.zeros(1, 32), "b": torch.zeros(1, 32)}, tmp_path / "two.bin")
    with pytest.raises(UserError, match="expected one tensor"):
        load_embedding(tmp_path / "two.bin")


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def broken_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(E, "save_pickle", broken_save)
    with pytest.raises(OSError):
        save_embedding(sample_embedding(), tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    old = save_embedding(sample_embedding(), tmp_path / "x.safetensors")
    before = old.read_bytes()
    monkeypatch.setattr(E, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("full")))
    with pytest.raises(OSError):
        save_embedding(Embedding("other", torch.zeros(1, 32)), old)
    assert old.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]


# ------------------------------------------------------------------ CLI


def test_cli_create_inspect_convert(tmp_path, capsys):
    out = tmp_path / "mychar.pt"
    assert main(["embedding", "create", "--model", "tiny", "--name", "zorblax", "--init-text",
                 "red hair", "--vpt", "4", "--out", str(out)]) == 0
    emb = load_embedding(out)
    assert (emb.name, emb.n_vectors, emb.width, emb.file_format) == ("zorblax", 4, 32, "a1111-pt")
    capsys.readouterr()

    assert main(["embedding", "inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "zorblax" and info["vectors"] == 4 and info["format"] == "a1111-pt"
    assert info["norms"] == pytest.approx(E.vector_norms(emb.vectors), abs=1e-6)
    assert info["sd_checkpoint_name"] == "tiny"

    assert main(["embedding", "inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "name:       zorblax" in text and "width:      32" in text

    conv = tmp_path / "learned_embeds.safetensors"
    assert main(["embedding", "convert", str(out), str(conv), "--format", "diffusers"]) == 0
    back = load_embedding(conv)
    assert back.file_format == "diffusers" and torch.equal(back.vectors, emb.vectors)


def test_cli_errors_leave_no_output(tmp_path, capsys):
    out = tmp_path / "bad.pt"
    code = main(["embedding", "create", "--model", "tiny", "--name", "zorblax", "--init-text",
                 "black hair, red eyes", "--vpt", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "5 tokens" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []

    assert main(["embedding", "create", "--model", "tiny", "--name", "miku", "--out", str(out)]) == 2
    assert not out.exists()


def test_cli_dataset_tag_name_and_overwrite(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", {"a": "1girl, solo"})
    out = tmp_path / "x.safetensors"
    assert main(["embedding", "create", "--model", "tiny", "--name", "1girl", "--dataset", str(data),
                 "--out", str(out)]) == 2
    assert "word of the dataset's captions" in capsys.readouterr().err and not out.exists()

    out.write_bytes(b"precious")
    assert main(["embedding", "create", "--model", "tiny", "--name", "zorblax", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"precious"
    assert main(["embedding", "convert", str(tmp_path / "nope.pt"), str(tmp_path / "y.pt")]) == 2
    assert "nope.pt: embedding file not found" in capsys.readouterr().err


def test_inspect_names_the_toy_world_and_flags_nan(tmp_path, capsys):
    save_embedding(Embedding("kiri_ti", torch.zeros(2, 64)), tmp_path / "toy.pt")
    assert main(["embedding", "inspect", str(tmp_path / "toy.pt")]) == 0
    assert "width:      64 (the toy world (model.preset toyworld))" in capsys.readouterr().out
    vectors = torch.zeros(2, 64)
    vectors[1, 0] = float("nan")
    save_embedding(Embedding("kiri_ti", vectors), tmp_path / "nan.pt")
    assert main(["embedding", "inspect", str(tmp_path / "nan.pt")]) == 1
    out = capsys.readouterr()
    assert "norms:" in out.out and out.err.count("\n") == 1 and "NaN/Inf" in out.err
    assert main(["embedding", "convert", str(tmp_path / "nan.pt"), str(tmp_path / "x.safetensors")]) == 2
    assert "1 of its 2 vectors hold NaN/Inf" in capsys.readouterr().err and not (tmp_path / "x.safetensors").exists()
