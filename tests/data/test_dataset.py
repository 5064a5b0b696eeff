import random

import pytest

from tiframework.config import DataConfig
from tiframework.data.dataset import StreamSampler, bucket_size, fill_template, process_tags, read_templates
from tiframework.errors import UserError


@pytest.mark.parametrize(
    "size, max_side, step, bucket",
    [
        ((2048, 4096), 512, 64, (256, 512)),  # the example
        ((512, 512), 512, 64, (512, 512)),
        ((1000, 700), 512, 64, (512, 384)),  # 512 x 358.4 -> 384
        ((300, 200), 512, 64, (320, 192)),  # small images are not upscaled beyond rounding
        ((5000, 500), 512, 64, (512, 64)),  # 10:1 keeps at least one step
        ((64, 40), 32, 8, (32, 24)),
    ],
)
def test_bucket_size(size, max_side, step, bucket):
    assert bucket_size(*size, max_side, step) == bucket


def test_tags_shuffle_keep_and_dropout():
    caption = "a, b, c, d, e, f"
    shuffled = process_tags(caption, random.Random(1), shuffle=True, keep=2, dropout=0.0)
    tags = shuffled.split(", ")
    assert tags[:2] == ["a", "b"] and sorted(tags) == list("abcdef")
    assert process_tags(caption, random.Random(1), shuffle=False, keep=0, dropout=0.0) == caption
    dropped = process_tags(caption, random.Random(1), shuffle=False, keep=1, dropout=0.99)
    assert dropped == "a"


def test_fill_template():
    assert fill_template("[filewords], [name]", "mychar", "1girl, solo") == "1girl, solo, mychar"
    assert fill_template("[filewords], [name]", "mychar", "") == "mychar"
    assert fill_template("a photo of [name]", "mychar", "x") == "a photo of mychar"


def test_template_without_name_is_an_error(tmp_path):
    with pytest.raises(UserError, match=r"no \[name\]"):
        read_templates(DataConfig(templates=["[filewords]"]))
    f = tmp_path / "t.txt"
    f.write_text("[filewords], [name]\n\n[name] art\n")
    assert read_templates(DataConfig(template_file=str(f))) == ["[filewords], [name]", "[name] art"]
    f.write_text("[filewords]\n")
    with pytest.raises(UserError, match=str(f)):
        read_templates(DataConfig(template_file=str(f)))


def test_sampler_batches_share_a_bucket_and_resume_replays():
    sizes = [(64, 64)] * 5 + [(64, 32)] * 4
    full = list(StreamSampler(sizes, batch_size=2, seed=3, start=0, length=12))
    assert len(full) == 12
    for batch in full:
        assert len({sizes[i] for i, _ in batch}) == 1
    # Starting at micro-batch 5 yields exactly the tail of the straight stream.
    assert list(StreamSampler(sizes, batch_size=2, seed=3, start=5, length=7)) == full[5:]
    seeds = [s for b in full for _, s in b]
    assert len(set(seeds)) == len(seeds)
