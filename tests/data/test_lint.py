"""Dataset lint over a corpus of broken files made here, and the image helpers it relies on."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from tiframework.cli import main
from tiframework.data.images import (
    UnreadableImage,
    image_size,
    list_images,
    read_caption,
    read_image,
)
from tiframework.data.lint import exit_code, lint_dataset, near_duplicates
from tiframework.errors import UserError
from tiframework.sd.names import name_pattern


def noise(seed: int, size=(300, 300)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but carries almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


EXPECTED = {
    ("error", "too-many-pixels", "big.png"),  # our 64 MP limit
    ("error", "too-many-pixels", "huge.png"),  # beyond PIL's own bomb limit
    ("error", "undecodable", "truncated.png"),
    ("error", "zero-byte", "zero.png"),
    ("error", "caption-not-utf8", "latin1.txt"),
    ("error", "name-in-caption", "named.txt"),
    ("warning", "caption-empty", "emptycap.txt"),
    ("warning", "caption-missing", "nocap.png"),
    ("warning", "near-duplicate", "dup_b.jpg"),
    ("warning", "shared-caption", "shared.png"),
    ("warning", "too-small", "tiny.png"),
    ("warning", "extreme-aspect", "wide.png"),
}


def make_corpus(root: Path) -> Path:
    root.mkdir()
    images = {
        "good.png": noise(0), "tiny.png": noise(1, (64, 64)), "wide.png": noise(2, (2600, 260)),
        "dup_a.png": noise(3), "nocap.png": noise(4), "emptycap.png": noise(5), "latin1.png": noise(6),
        "named.png": noise(7), "shared.png": noise(8), "shared.jpg": noise(9), "full.png": noise(10),
    }  # fmt: skip
    for name, image in images.items():
        image.save(root / name, quality=95, compress_level=1)  # fast PNG: noise does not compress
    noise(3).save(root / "dup_b.jpg", quality=90)  # dup_a re-encoded as JPEG
    (root / "zero.png").write_bytes(b"")
    (root / "truncated.png").write_bytes((root / "full.png").read_bytes()[:5000])
    (root / "full.png").unlink()
    (root / "huge.png").write_bytes(png_header(100_000, 100_000))
    (root / "big.png").write_bytes(png_header(9_000, 9_000))
    for image in list_images(root):
        (root / f"{image.stem}.txt").write_text("1girl, smile", encoding="utf-8")
    (root / "nocap.txt").unlink()
    (root / "emptycap.txt").write_text(" , \n", encoding="utf-8")
    (root / "latin1.txt").write_bytes(b"caf\xe9, 1girl")
    (root / "named.txt").write_text("MyChar, 1girl, smile", encoding="utf-8")
    return root


@pytest.fixture()
def corpus(tmp_path) -> Path:
    return make_corpus(tmp_path / "data")


def keys(findings) -> set[tuple[str, str, str]]:
    return {(f.severity, f.code, f.file) for f in findings}


def test_lint_finds_exactly_the_planted_problems(corpus, monkeypatch):
    decoded: list[str] = []
    real_load = ImageFile.ImageFile.load

    def spy_load(self):
        decoded.append(Path(self.filename).name)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    findings = lint_dataset(corpus, embedding_name="mychar")
    assert keys(findings) == EXPECTED
    assert findings == sorted(findings, key=lambda f: (f.file, f.code))
    assert "huge.png" not in decoded and "big.png" not in decoded  # refused from the header alone
    by_file = {f.file: f.message for f in findings}
    assert "10.0:1" in by_file["wide.png"] and "51 px" in by_file["wide.png"]
    assert "81.0 megapixels" in by_file["big.png"]
    assert "dup_a.png" in by_file["dup_b.jpg"]
    assert "re-save it as UTF-8" in by_file["latin1.txt"]
    assert exit_code(findings) == 1


def test_lint_thresholds_and_no_name(corpus):
    findings = keys(lint_dataset(corpus, min_side=32, max_ratio=12, hash_distance=-1))
    gone = {("warning", "too-small", "tiny.png"), ("warning", "extreme-aspect", "wide.png"),
            ("warning", "near-duplicate", "dup_b.jpg"), ("error", "name-in-caption", "named.txt")}
    assert findings == EXPECTED - gone
    assert ("warning", "near-duplicate", "dup_b.jpg") in keys(lint_dataset(corpus, hash_distance=64))


def test_cli_exit_status_and_json(corpus, capsys):
    assert main(["lint", str(corpus), "--name", "mychar"]) == 1
    text = capsys.readouterr().out
    assert "error   zero-byte        zero.png: file is empty (0 bytes)" in text
    assert text.rstrip().endswith("15 images: 6 error(s), 6 warning(s)")

    assert main(["lint", str(corpus), "--name", "mychar", "--json"]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert (payload["images"], payload["errors"], payload["warnings"]) == (15, 6, 6)
    assert {(f["severity"], f["code"], f["file"]) for f in payload["findings"]} == EXPECTED

    for name in ("zero.png", "truncated.png", "huge.png", "big.png", "latin1.txt", "named.txt"):
        (corpus / name).unlink()
    # latin1.png and named.png have lost their captions: 2 more warnings, which alone pass.
    assert main(["lint", str(corpus), "--name", "mychar"]) == 0
    assert "0 error(s), 8 warning(s)" in capsys.readouterr().out
    assert main(["lint", str(corpus / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_empty_folder_is_an_error(tmp_path):
    assert keys(lint_dataset(tmp_path)) == {("error", "no-images", "")}


def test_name_in_caption_matches_whole_words_any_case():
    # The rule training splices by (sd.names): lint flags exactly what training would replace.
    assert name_pattern("mychar").search("MyChar, 1girl")
    assert name_pattern("mychar").search("(mychar:1.2), smile")
    assert not name_pattern("mychar").search("mycharacter, 1girl")
    assert not name_pattern("mychar").search("1girl, smile")
    assert not name_pattern("miku").search("miku_cos, 1girl")  # one word to CLIP's splitter too


def test_lint_agrees_with_training_on_names_inside_words(tmp_path):
    Image.new("RGB", (300, 300), "white").save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("miku_cos, 1girl", encoding="utf-8")
    assert not any(f.code == "name-in-caption" for f in lint_dataset(tmp_path, "miku"))
    (tmp_path / "a.txt").write_text("miku cos, 1girl", encoding="utf-8")
    assert any(f.code == "name-in-caption" for f in lint_dataset(tmp_path, "miku"))


def test_near_duplicates_reports_each_later_image_against_its_closest():
    hashes = {"a": 0, "b": 0b111, "c": 2**64 - 1, "d": 0b1}
    assert near_duplicates(hashes, 3) == [("b", "a", 3), ("d", "a", 1)]
    assert near_duplicates(hashes, 0) == []


# ---------------------------------------------------------------- tiframework.data.images


def test_list_images_flat_sorted_any_case_following_links(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.PNG", "a.jpg", "sub/c.png"):
        noise(0, (8, 8)).save(tmp_path / name, format="PNG")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "link.webp").symlink_to("a.jpg")
    (tmp_path / "dangling.png").symlink_to("missing.png")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "link.webp"]
    with pytest.raises(UserError, match="no such folder"):
        list_images(tmp_path / "nope")


def test_read_image_composites_transparency_on_white(tmp_path):
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255])
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png")
    Image.new("LA", (4, 4), (0, 0)).save(tmp_path / "la.png")
    Image.new("RGBA", (4, 4), (0, 0, 255, 128)).save(tmp_path / "half.png")
    assert read_image(tmp_path / "p.png").getpixel((0, 0)) == (255, 255, 255)
    assert read_image(tmp_path / "la.png").getpixel((0, 0)) == (255, 255, 255)
    assert read_image(tmp_path / "half.png").getpixel((0, 0)) == (127, 127, 255)
    assert read_image(tmp_path / "half.png").mode == "RGB"


def test_unreadable_images_say_why(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "huge.png").write_bytes(png_header(100_000, 100_000))
    (tmp_path / "big.png").write_bytes(png_header(9_000, 9_000))
    expected = {"zero.png": "zero-byte", "text.png": "undecodable", "huge.png": "too-many-pixels",
                "big.png": "too-many-pixels", "absent.png": "missing"}
    for name, reason in expected.items():
        with pytest.raises(UnreadableImage, match=name) as info:
            read_image(tmp_path / name)
        assert info.value.reason == reason and "\n" not in str(info.value)
    assert image_size(tmp_path / "big.png", max_pixels=10**8) == (9_000, 9_000)  # header only
    noise(0).save(tmp_path / "small.png")
    with pytest.raises(UnreadableImage, match="0.05 MP limit"):
        read_image(tmp_path / "small.png", max_pixels=50_000)


def test_read_caption_utf8_bom_missing_and_latin1(tmp_path):
    image = tmp_path / "a.png"
    assert read_caption(image) is None
    (tmp_path / "a.txt").write_bytes("\ufeff1girl, café\n".encode())
    assert read_caption(image) == "1girl, café"
    (tmp_path / "a.txt").write_bytes(b"caf\xe9")
    with pytest.raises(UserError, match=r"a\.txt: caption is not UTF-8.*re-save it as UTF-8"):
        read_caption(image)


def test_lint_reports_images_with_transparency(tmp_path):
    rgba = np.full((300, 300, 4), 200, dtype=np.uint8)
    rgba[:50, :50, 3] = 0  # a transparent corner
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut.png")
    opaque = rgba.copy()
    opaque[..., 3] = 255  # an alpha channel that hides nothing is not reported
    Image.fromarray(opaque, "RGBA").save(tmp_path / "solid.png")
    for stem in ("cut", "solid"):
        (tmp_path / f"{stem}.txt").write_text("1girl", encoding="utf-8")
    found = [(f.code, f.file) for f in lint_dataset(tmp_path) if f.code == "transparency"]
    assert found == [("transparency", "cut.png")]
