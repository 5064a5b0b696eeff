"""Embedding names: one rule (characters, length, what SD's tokenizer reads), everywhere a
name enters: `embedding create`, training, resume, `embedding convert --name`."""

from __future__ import annotations

import pytest

from runs import shrunk_quickstart
from tiframework.cli import main
from tiframework.errors import UserError
from tiframework.sd.embeddings import check_name
from tiframework.sd.names import MAX_NAME_BYTES, check_name_text, tokenizer_view


@pytest.mark.parametrize("name", ["kiri_ti", "kiri-ti.v2", "Kiri2", "キリ", "x" * MAX_NAME_BYTES])
def test_good_names_pass_unchanged(name):
    assert check_name_text(f"  {name} ") == name


@pytest.mark.parametrize(("name", "fragment"), [
    ("kiri/ti", r"contains '/' \(a path separator\)"),
    ("kiri\\ti", r"contains '\\\\' \(a path separator\)"),
    ("kiri:ti", r"contains ':'"),
    ("<kiri>", r"contains '<' \(less-than sign\)"),
    ("my,char", r"contains ',' \(a comma"),
    ("kiri ti", r"contains ' ' \(a space"),
    ("kiri\x00", r"reads as 'kiri'"),  # ftfy drops control characters
    ("kiri\u2665", r"contains '\u2665' \(black heart suit\)"),
    (".kiri", r"starts with '\.'"),
    ("-kiri", r"starts with '-'"),
    ("ｋｉｒｉ", r"reads as 'kiri' to SD's tokenizer"),
    ("kiri²", r"reads as 'kiri2'"),
    ("k" * 240, r"240 characters \(240 bytes.*within 100 bytes"),
    ("キ" * 40, r"40 characters \(120 bytes"),
    ("", "empty"),
])
def test_bad_names_get_one_clear_error(name, fragment):
    with pytest.raises(UserError, match=fragment) as err:
        check_name_text(name)
    assert "\n" not in str(err.value)


def test_vocab_check_sees_what_the_tokenizer_sees(tiny_parts):
    assert tokenizer_view("ｍｉｋｕ") == "miku"
    with pytest.raises(UserError, match=r"'ｍｉｋｕ' is already a word in CLIP's vocabulary \('miku'\)"):
        check_name("ｍｉｋｕ", tiny_parts.tokenizer)
    assert check_name("zorblax", tiny_parts.tokenizer) == "zorblax"


def test_a_bad_name_never_reaches_the_file_system(tmp_path, capsys):
    for name, char in (("kiri/ti", "/"), ("k" * 240, "240 characters")):
        out = tmp_path / "x.pt"
        assert main(["embedding", "create", "--model", "tiny", "--name", name, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and char in err
        assert list(tmp_path.iterdir()) == []


def test_resume_checks_the_name_too(tmp_path, tiny_parts):
    from tiframework.training.train import train

    first = train(shrunk_quickstart(tmp_path, "training.max_steps=2"), parts=tiny_parts)
    for name, fragment in (("miku", "vocabulary"), ("kiri:ti", "contains ':'"), ("1girl", "captions")):
        cfg = shrunk_quickstart(tmp_path, "training.max_steps=4", f"embedding.name={name}",
                                f"resume={first['embedding']}")
        with pytest.raises(UserError, match=fragment):
            train(cfg, parts=tiny_parts)
