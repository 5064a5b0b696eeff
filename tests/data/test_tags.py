"""Tag statistics and pruned dataset variants: the rules, the files, the safety."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tiframework.cli import main
from tiframework.data.images import join_tags, list_images, read_image, split_tags
from tiframework.data.tags import apply_rules, count_tags, make_variant, parse_replace, tag_key, tag_stats
from tiframework.errors import UserError

CAPTIONS = {
    "a": "1girl, black gloves, ahoge, smile, nude",
    "b": "1girl, black_gloves, ahoge, nude, nipples, outdoors",
    "c": "1girl, Black Gloves, sitting, nsfw, nipples",
    "d": "1girl, ahoge, hatsune miku \\(cosplay\\)",
    "e": None,  # an image without a caption
}


def make_dataset(root: Path, captions: dict[str, str | None] = CAPTIONS) -> Path:
    root.mkdir(parents=True)
    for i, (stem, text) in enumerate(captions.items()):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / f"{stem}.png")
        if text is not None:
            (root / f"{stem}.txt").write_text(text, encoding="utf-8")
    (root / "notes.md").write_text("not part of the dataset")
    return root


def snapshot(folder: Path) -> dict[str, tuple[bool, str]]:
    """Every entry of `folder`: whether it is a link, and a digest of its content or link target."""
    out = {}
    for p in sorted(folder.iterdir()):
        content = os.readlink(p).encode() if p.is_symlink() else p.read_bytes()
        out[p.name] = (p.is_symlink(), hashlib.sha256(content).hexdigest())
    return out


def captions_of(folder: Path) -> dict[str, str]:
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))}


# ---------------------------------------------------------------- pure functions


def test_split_and_join_tags():
    assert split_tags(" 1girl,, smile ,\nblue sky,") == ["1girl", "smile", "blue sky"]
    assert split_tags("") == []
    assert join_tags(["1girl", " ", "smile "]) == "1girl, smile"


def test_tag_key_ignores_case_underscores_spacing_and_escapes():
    assert tag_key("Black_Gloves") == tag_key("black  gloves") == "black gloves"
    assert tag_key("hatsune miku \\(cosplay\\)") == "hatsune miku (cosplay)"


def test_count_tags_counts_images_not_occurrences():
    stats = count_tags([["a", "b"], ["A", "a"], ["b_c"], []], n_images=4, threshold=0.5)
    assert [(s.tag, s.count, s.share, s.trait) for s in stats] == [
        ("a", 2, 0.5, True),
        ("b", 1, 0.25, False),
        ("b_c", 1, 0.25, False),
    ]


def test_parse_replace():
    assert parse_replace("nude=nsfw, nipples = nsfw") == {"nude": "nsfw", "nipples": "nsfw"}
    assert parse_replace(None) == {}
    for bad in ("nude", "nude=", "=nsfw"):
        with pytest.raises(UserError, match="OLD=NEW"):
            parse_replace(bad)


def test_apply_rules_removes_replaces_and_never_duplicates():
    replace = {"nude": "nsfw", "nipples": "nsfw"}
    tags = ["1girl", "Black_Gloves", "nude", "smile", "nipples", "nsfw"]
    new, removed, replaced = apply_rules(tags, {"black gloves"}, replace)
    assert new == ["1girl", "nsfw", "smile"]
    assert removed == ["Black_Gloves"] and replaced == ["nude", "nipples"]
    # Duplicates the rules did not create are the source's business: left alone.
    assert apply_rules(["x", "x"], set(), replace)[0] == ["x", "x"]


# ---------------------------------------------------------------- stats


def test_tag_stats_flags_likely_traits(tmp_path):
    stats = {s.tag: s for s in tag_stats(make_dataset(tmp_path / "src"))}
    assert (stats["1girl"].count, stats["1girl"].share, stats["1girl"].trait) == (4, 0.8, True)
    assert stats["black gloves"].count == 3 and stats["black gloves"].trait  # 3 spellings, one tag
    assert stats["ahoge"].share == 0.6 and stats["ahoge"].trait  # >= threshold
    assert not stats["nude"].trait
    assert not {s.tag for s in tag_stats(tmp_path / "src", threshold=0.7) if s.trait} - {"1girl"}


def test_cli_stats_json(tmp_path, capsys):
    src = make_dataset(tmp_path / "src")
    assert main(["tags", "stats", str(src), "--json", "--top", "2"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["images"] == 5
    assert [(t["tag"], t["count"], t["trait"]) for t in payload["tags"]] == [("1girl", 4, True), ("ahoge", 3, True)]
    assert main(["tags", "stats", str(src)]) == 0
    assert "likely a character trait" in capsys.readouterr().out


# ---------------------------------------------------------------- variants


def test_prune_variant_captions_links_and_record(tmp_path):
    src = make_dataset(tmp_path / "src")
    before = snapshot(src)
    report = make_variant(src, tmp_path / "pruned", remove=["black gloves", "ahoge"],
                          replace={"nude": "nsfw", "nipples": "nsfw"})
    out = tmp_path / "pruned"
    assert snapshot(src) == before  # the source is never touched
    assert captions_of(out) == {
        "a": "1girl, smile, nsfw",
        "b": "1girl, nsfw, outdoors",
        "c": "1girl, sitting, nsfw",
        "d": "1girl, hatsune miku \\(cosplay\\)",
    }
    assert [p.name for p in list_images(out)] == ["a.png", "b.png", "c.png", "d.png", "e.png"]
    link = out / "a.png"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert read_image(link).getpixel((0, 0)) == (0, 0, 0)
    record = yaml.safe_load((out / "variant.yaml").read_text())
    assert record == report.record
    assert record["source"] == str(src.resolve()) and record["images"] == 5 and record["captions"] == 4
    assert record["links"] == {"symlink": 5}
    assert record["rules"] == {"remove": ["black gloves", "ahoge"], "auto": None, "keep": [],
                               "replace": {"nude": "nsfw", "nipples": "nsfw"}}
    assert record["removed"] == {"black gloves": 3, "ahoge": 3}
    assert record["replaced"] == {"nipples": {"to": "nsfw", "count": 2}, "nude": {"to": "nsfw", "count": 2}}


def test_auto_prune_respects_keep_and_is_idempotent(tmp_path):
    src = make_dataset(tmp_path / "src")
    out = tmp_path / "auto"
    make_variant(src, out, auto=0.6, keep=["1girl"])
    first = snapshot(out)
    assert captions_of(out)["a"] == "1girl, smile, nude"
    record = yaml.safe_load((out / "variant.yaml").read_text())
    assert record["auto_removed"] == [{"tag": "ahoge", "share": 0.6}, {"tag": "black gloves", "share": 0.6}]
    make_variant(src, out, auto=0.6, keep=["1girl"])
    assert snapshot(out) == first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_variant_of_a_moved_tree_still_resolves(tmp_path):
    make_dataset(tmp_path / "proj" / "src")
    make_variant(tmp_path / "proj" / "src", tmp_path / "proj" / "v", remove=["smile"])
    (tmp_path / "proj").rename(tmp_path / "moved")
    assert read_image(tmp_path / "moved" / "v" / "b.png").size == (8, 8)


def test_unsafe_outputs_and_contradictory_rules_are_refused(tmp_path):
    src = make_dataset(tmp_path / "src")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.txt").write_text("do not delete")
    cases = [
        ({"out": src}, "outside the source"),
        ({"out": src / "variant"}, "outside the source"),
        ({"out": tmp_path}, "contains the source"),
        ({"out": tmp_path / "precious"}, "not a dataset variant"),
        ({"out": tmp_path / "v", "remove": ["nude"], "replace": {"nude": "nsfw"}}, "both removed and replaced"),
        ({"out": tmp_path / "v", "remove": ["ahoge"], "keep": ["ahoge"]}, "both removed and kept"),
        ({"out": tmp_path / "v", "auto": 1.5}, "auto share"),
    ]
    before = snapshot(src)
    for kwargs, message in cases:
        with pytest.raises(UserError, match=message):
            make_variant(src, **kwargs)
    assert snapshot(src) == before
    assert (tmp_path / "precious" / "thesis.txt").read_text() == "do not delete"
    assert not (tmp_path / "v").exists()


def test_non_utf8_source_caption_fails_before_writing(tmp_path):
    src = make_dataset(tmp_path / "src")
    (src / "b.txt").write_bytes(b"caf\xe9")
    with pytest.raises(UserError, match="re-save it as UTF-8"):
        make_variant(src, tmp_path / "v", remove=["smile"])
    assert not (tmp_path / "v").exists()


def test_cli_prune(tmp_path, capsys):
    src = make_dataset(tmp_path / "src")
    out = tmp_path / "v"
    argv = ["tags", "prune", str(src), "--out", str(out), "--remove", "black gloves, ahoge",
            "--replace", "nude=nsfw,nipples=nsfw", "--auto", "0.8", "--keep", "1girl"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "5 images (5 symlink), 4 captions" in printed and "removed 'ahoge' from 3 caption(s)" in printed
    assert captions_of(out)["b"] == "1girl, nsfw, outdoors"
    assert main(["tags", "prune", str(src), "--out", str(src)]) == 2
    assert "outside the source" in capsys.readouterr().err


def test_links_fall_back_to_hard_links_then_copies(tmp_path, monkeypatch):
    src = make_dataset(tmp_path / "src")

    def refuse(*_args, **_kwargs):
        raise OSError("not supported here")

    monkeypatch.setattr(os, "symlink", refuse)
    assert make_variant(src, tmp_path / "hard").record["links"] == {"hardlink": 5}
    assert (tmp_path / "hard" / "a.png").stat().st_ino == (src / "a.png").stat().st_ino
    monkeypatch.setattr(os, "link", refuse)
    assert make_variant(src, tmp_path / "copy").record["links"] == {"copy": 5}
    assert (tmp_path / "copy" / "a.png").read_bytes() == (src / "a.png").read_bytes()
    assert captions_of(tmp_path / "copy") == captions_of(src)  # no rules: captions unchanged
