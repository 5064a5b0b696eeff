"""WD1.4 tagging against a tiny ONNX model built here, with outputs known exactly.

The model (`tests/helpers/tiny_tagger.py`) has the real tagger's signature and computes
each tag's probability as a linear function of four features of its input: the mean of
channel 0, 1 and 2 (B, G, R after our RGB->BGR swap) and the mean of the left half. So a
red image can only score `red_theme` if the channels really were swapped, and a black
portrait only lights up `white_background` / `left_light` if it was padded with white, centred.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiframework.cli import main
from tiframework.data.tagger import KAOMOJI, TagOptions, format_tag, select_tags, tag_folder
from tiframework.data.wd14 import TagRow, WD14Model, load_tag_csv, preprocess
from tiframework.errors import UserError
from tiny_tagger import BLUE, RED, ROWS, SIDE, TAGS, build_model, write_csv


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tagger")
    return {
        "model": build_model(d / "model.onnx"),
        "fixed": build_model(d / "fixed.onnx", batch=2),  # exported with a fixed batch size
        "csv": write_csv(d / "selected_tags.csv"),
    }


def solid(color, size=(SIDE, SIDE), mode="RGB") -> Image.Image:
    return Image.new(mode, size, color)


def make_folder(root: Path, images: dict[str, Image.Image]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        image.save(root / name)
    return root


def run(folder: Path, files, **kwargs) -> dict[str, str]:
    kwargs.setdefault("device", "cpu")
    kwargs.setdefault("progress", False)
    tag_folder(folder, kwargs.pop("model", files["model"]), files["csv"], **kwargs)
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))}


# ---------------------------------------------------------------- pure functions


def test_format_tag_spaces_kaomoji_and_escapes():
    assert format_tag("long_hair") == "long hair"
    assert format_tag("^_^") == "^_^"  # a face, not two words
    assert format_tag("hatsune_miku_(cosplay)") == r"hatsune miku \(cosplay\)"
    assert format_tag("\\m/") == r"\\m/"
    assert format_tag("long_hair", keep_underscores=True) == "long_hair"
    assert format_tag("hatsune_miku_(cosplay)", escape=False) == "hatsune miku (cosplay)"
    assert {"^_^", ">_<", "o_o", "||_||"} <= KAOMOJI


def probs_for(**named: float) -> np.ndarray:
    probs = np.zeros(len(ROWS))
    for name, p in named.items():
        probs[[r.name for r in ROWS].index(name)] = p
    return probs


def test_select_tags_thresholds_per_category():
    probs = probs_for(red_theme=0.35, blue_theme=0.3499, character_low=0.85, long_hair=0.9)
    assert select_tags(probs, ROWS, TagOptions()) == ["long hair", "character low", "red theme"]
    assert select_tags(probs, ROWS, TagOptions(general_threshold=0.5, character_threshold=0.9)) == ["long hair"]


def test_select_tags_rating_only_on_request_and_first():
    probs = probs_for(questionable=0.3, general=0.2, long_hair=0.9)
    assert select_tags(probs, ROWS, TagOptions()) == ["long hair"]
    assert select_tags(probs, ROWS, TagOptions(add_rating=True)) == ["questionable", "long hair"]
    assert select_tags(probs, ROWS, TagOptions(add_rating=True, sort="alpha")) == ["questionable", "long hair"]


def test_select_tags_orderings_exclude_and_formatting():
    probs = probs_for(red_theme=0.5, long_hair=0.9, **{"^_^": 0.6, "\\m/": 0.7})
    assert select_tags(probs, ROWS, TagOptions()) == ["long hair", r"\\m/", "^_^", "red theme"]
    assert select_tags(probs, ROWS, TagOptions(sort="alpha")) == [r"\\m/", "^_^", "long hair", "red theme"]
    opts = TagOptions(keep_underscores=True, escape=False, exclude=("Long Hair", "red_theme"))
    assert select_tags(probs, ROWS, opts) == ["\\m/", "^_^"]


def test_select_tags_merges_names_that_format_alike():
    rows = [TagRow("a_b", 0), TagRow("a b", 0)]
    assert select_tags([0.5, 0.9], rows, TagOptions()) == ["a b"]


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="general-threshold"):
        TagOptions(general_threshold=1.5)
    with pytest.raises(UserError, match="sort"):
        TagOptions(sort="random")


def test_preprocess_pads_white_centred_and_swaps_to_bgr():
    image = solid((255, 0, 0), size=(16, SIDE))  # a red portrait, 16 wide
    array = preprocess(image, SIDE)
    assert array.shape == (SIDE, SIDE, 3) and array.dtype == np.float32
    assert (array[:, :8] == 255).all() and (array[:, 24:] == 255).all()  # white, both sides
    assert (array[:, 8:24] == [0, 0, 255]).all()  # red in BGR order
    assert preprocess(solid((0, 0, 255), size=(64, 64)), SIDE).shape == (SIDE, SIDE, 3)


# ---------------------------------------------------------------- the model end to end


def test_captions_match_known_model_outputs(tmp_path, files):
    folder = make_folder(tmp_path / "d", {
        "red.png": solid((255, 0, 0)),
        "blue.png": solid((0, 0, 255)),
        "big_red.png": solid((255, 0, 0), size=(64, 64)),  # resized to the model's 32
        "clear.png": solid((255, 0, 0, 0), mode="RGBA"),  # fully transparent: white
        "portrait.png": solid((0, 0, 0), size=(16, SIDE)),  # black, padded white, centred
    })
    captions = run(folder, files)
    assert captions["red"] == RED  # without RGB->BGR it would be "blue theme"
    assert captions["blue"] == BLUE
    assert captions["big_red"] == RED
    both = run(make_folder(tmp_path / "e", {"clear.png": solid((255, 0, 0, 0), mode="RGBA"),
                                            "portrait.png": solid((0, 0, 0), size=(16, SIDE))}),
               files, options=TagOptions(sort="alpha"))
    assert both["clear"] == (r"\\m/, ^_^, blue theme, hatsune miku \(cosplay\), left light, long hair, "
                             "red theme, white background")
    # Every channel and the left half average 0.5 only with white, centred padding.
    assert both["portrait"] == r"\\m/, ^_^, blue theme, left light, long hair, red theme, white background"


def test_batching_equals_one_by_one(tmp_path, files):
    # Colours whose tag scores are far apart, so float rounding cannot swap two tags.
    colors = [(255, 0, 0), (0, 0, 255), (200, 100, 30), (30, 60, 220), (120, 240, 10)]
    images = {f"{i}.png": solid(c, size=(SIDE + 8 * i, SIDE)) for i, c in enumerate(colors)}
    model = WD14Model(files["model"], device="cpu")
    arrays = np.stack([preprocess(im, SIDE) for im in images.values()])
    singles = np.concatenate([model.predict(a[None]) for a in arrays])
    np.testing.assert_allclose(model.predict(arrays), singles, atol=1e-4)  # float32 summation order
    one = run(make_folder(tmp_path / "one", images), files, batch_size=1)
    assert run(make_folder(tmp_path / "three", images), files, batch_size=3) == one
    assert run(make_folder(tmp_path / "fixed", images), files, batch_size=3, model=files["fixed"]) == one
    assert len(one) == 5 and one["0"] == RED


def test_existing_captions_kept_then_backed_up(tmp_path, files):
    folder = make_folder(tmp_path / "d", {"red.png": solid((255, 0, 0)), "blue.png": solid((0, 0, 255))})
    (folder / "red.txt").write_text("my own caption", encoding="utf-8")
    report = tag_folder(folder, files["model"], files["csv"], device="cpu", progress=False)
    assert [p.name for p in report.kept] == ["red.png"] and [p.name for p in report.written] == ["blue.png"]
    assert (folder / "red.txt").read_text() == "my own caption"

    report = tag_folder(folder, files["model"], files["csv"], overwrite=True, device="cpu", progress=False)
    assert (folder / "red.txt").read_text() == RED
    assert (folder / "red.txt.bak").read_text() == "my own caption"
    assert [p.name for p in report.unchanged] == ["blue.png"]  # same caption: no rewrite, no backup
    assert [p.name for p in report.backups] == ["red.txt.bak"]

    tag_folder(folder, files["model"], files["csv"], TagOptions(general_threshold=0.45), overwrite=True,
               device="cpu", progress=False)
    assert (folder / "red.txt.bak").read_text() == "my own caption"  # the older backup survives
    assert (folder / "red.txt.bak.1").read_text() == RED
    assert (folder / "red.txt").read_text() == r"red theme, hatsune miku \(cosplay\), ^_^"


def test_unreadable_images_are_skipped_not_fatal(tmp_path, files):
    folder = make_folder(tmp_path / "d", {"red.png": solid((255, 0, 0)), "z_blue.png": solid((0, 0, 255))})
    (folder / "empty.png").write_bytes(b"")
    (folder / "cut.png").write_bytes((folder / "red.png").read_bytes()[:60])
    (folder / "a.jpg").write_bytes((folder / "red.png").read_bytes())  # a.jpg is a PNG: PIL sniffs
    solid((0, 0, 255)).save(folder / "a.png")  # a.png and a.jpg would share a.txt
    report = tag_folder(folder, files["model"], files["csv"], batch_size=2, device="cpu", progress=False)
    skipped = {p.name: why for p, why in report.skipped}
    assert set(skipped) == {"empty.png", "cut.png", "a.png"}
    assert "0 bytes" in skipped["empty.png"] and "a.txt" in skipped["a.png"]
    assert sorted(p.name for p in folder.glob("*.txt")) == ["a.txt", "red.txt", "z_blue.txt"]
    assert (folder / "a.txt").read_text() == RED


def test_provider_is_cuda_only_when_it_runs(files):
    model = WD14Model(files["model"], device="auto")
    assert model.provider in {"CUDAExecutionProvider", "CPUExecutionProvider"}
    assert model.n_outputs == len(TAGS) and model.size == SIDE
    if model.provider == "CPUExecutionProvider":  # no working CUDA here: asking for it is an error
        with pytest.raises(UserError, match="CUDAExecutionProvider did not start"):
            WD14Model(files["model"], device="cuda")


# ---------------------------------------------------------------- bad input


def bad_input_cases(tmp: Path, files) -> dict[str, tuple[dict, str]]:
    (tmp / "garbage.onnx").write_bytes(b"not a model")
    return {
        "missing model": ({"model_path": tmp / "nope.onnx"}, "model file not found"),
        "garbage model": ({"model_path": tmp / "garbage.onnx"}, "not a loadable ONNX model"),
        "nchw model": ({"model_path": build_model(tmp / "nchw.onnx", layout="nchw")}, "not WD1.4-shaped"),
        "rank-3 output": ({"model_path": build_model(tmp / "r3.onnx", out_rank=3)}, r"not \[batch, n_tags\]"),
        "missing csv": ({"tags_csv": tmp / "nope.csv"}, "tags file not found"),
        "csv columns": ({"tags_csv": write_csv(tmp / "cols.csv", header=("id", "tag"))}, "tag_id,name,category"),
        "csv rows": ({"tags_csv": write_csv(tmp / "short.csv", tags=TAGS[:-1])}, "has 13 tags but .* outputs 14"),
        "no images": ({"folder": tmp / "empty"}, "no images"),
        "no folder": ({"folder": tmp / "absent"}, "no such folder"),
    }


def test_each_bad_input_is_one_user_error_before_any_write(tmp_path, files):
    folder = make_folder(tmp_path / "d", {"red.png": solid((255, 0, 0))})
    (tmp_path / "empty").mkdir()
    for case, (override, message) in bad_input_cases(tmp_path, files).items():
        kwargs = {"folder": folder, "model_path": files["model"], "tags_csv": files["csv"],
                  "device": "cpu", "progress": False, **override}
        with pytest.raises(UserError, match=message):
            tag_folder(**kwargs)
        assert not list(folder.glob("*.txt")), case


def test_bad_csv_category_names_the_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("tag_id,name,category,count\n0,ok,0,5\n1,bad,x,5\n", encoding="utf-8")
    with pytest.raises(UserError, match="line 3"):
        load_tag_csv(path)
    assert load_tag_csv(write_csv(tmp_path / "good.csv"))[4] == TagRow("red_theme", 0)


# ---------------------------------------------------------------- command line


def test_cli_tag_prints_provider_and_writes_captions(tmp_path, files, capsys):
    folder = make_folder(tmp_path / "d", {"red.png": solid((255, 0, 0))})
    argv = ["tag", str(folder), "--model", str(files["model"]), "--tags", str(files["csv"]), "--device", "cpu",
            "--add-rating", "--keep-underscores", "--no-escape", "--sort", "alpha", "--exclude", "long hair, ^_^"]
    assert main(argv) == 0
    assert "tagged 1 image(s) on CPUExecutionProvider" in capsys.readouterr().out
    assert (folder / "red.txt").read_text() == r"sensitive, \m/, hatsune_miku_(cosplay), red_theme"
    assert main(["tag", str(folder), "--model", str(tmp_path / "x.onnx"), "--tags", str(files["csv"])]) == 2
    assert "model file not found" in capsys.readouterr().err
