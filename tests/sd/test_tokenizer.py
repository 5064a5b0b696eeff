"""Our offline CLIP tokenizer gives the ids OpenAI CLIP (via open_clip) gives.

open_clip pads with 0 after the end token, SD pads with the end token (49407), so
sequences are compared up to and including the first end token.
"""

from __future__ import annotations

import json

import pytest

from tiframework.sd.text import prompt_token_ids
from tiframework.sd.tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE, clip_tokenizer, write_tokenizer_files

PROMPTS = [
    "a photo of a cat",
    "masterpiece, best quality, 1girl, solo, long hair, looking at viewer, smile",
    "1girl, (red eyes:1.2), [blue hair], {{twintails}}, \\(cosplay\\), <lora:foo:0.8>",
    "black_hair, white shirt, BLACK HAIR, Black Hair",
    "hatsune miku, 初音ミク, ボーカロイド",
    "Café — naïve façade, Straße, ñandú, Ελληνικά, русский",
    "(╯°□°)╯︵ ┻━┻, ^_^, (•̀ᴗ-)✧, ( ͡° ͜ʖ ͡°), ¯\\_(ツ)_/¯, owo, :3, <3",
    "emoji 😀🔥✨ and ♥ hearts ♡",
    "   extra    spaces\tand\ttabs\nnewline  ",
    "",
    "score_9, rating:safe, 2girls, 4k, 1080p, 3:4 aspect",
    # longer than one 77-token window: both truncate and end with the end token
    ", ".join(f"tag{i} word{i}" for i in range(60)),
]

# Text that OpenAI CLIP's `ftfy.fix_text` rewrites before BPE (curly quotes, full/half
# width forms, ligatures). transformers 5's CLIPTokenizer (tokenizers backend: NFC,
# whitespace, lowercase) skips ftfy, so `tiframework.sd.text.prompt_token_ids` (the path
# every prompt and init text takes) applies it, as A1111's transformers 4.x tokenizer does.
FTFY_PROMPTS = [
    "\u201cquoted\u201d and \u2018single\u2019 quotes",
    "\uff21\uff22\uff23 fullwidth \uff46\uff55\uff4c\uff4c",
    "\uff76\uff80\uff76\uff85 halfwidth katakana",
    "\ufb01ne ligature",
    "(\uff61\u2022\u0300\u1d17-)\u2727",
]


def until_eos(ids: list[int]) -> list[int]:
    return ids[: ids.index(EOS_ID) + 1]


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    import open_clip

    return open_clip.get_tokenizer("ViT-L-14")  # bundled BPE, no download


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ids_match_open_clip(open_clip_tokenizer, prompt):
    ref = until_eos(open_clip_tokenizer([prompt])[0].tolist())
    ours = clip_tokenizer()(prompt, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ours) == 77
    assert until_eos(ours) == ref
    # SD pads with the end token, not 0
    assert set(ours[len(ref):]) <= {EOS_ID}


@pytest.mark.parametrize("prompt", PROMPTS[:-1] + FTFY_PROMPTS)
def test_prompt_token_ids_are_the_inner_ids(open_clip_tokenizer, prompt):
    """`prompt_token_ids` (no start/end) is what prompt encoding and init text use."""
    ref = until_eos(open_clip_tokenizer([prompt])[0].tolist())[1:-1]
    assert prompt_token_ids(clip_tokenizer(), prompt, None, 0, VOCAB_SIZE) == ref


def test_special_ids_and_vocab(tmp_path):
    tok = clip_tokenizer()
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (BOS_ID, EOS_ID, EOS_ID)
    assert len(tok) == VOCAB_SIZE
    folder = write_tokenizer_files(tmp_path / "tok")
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == VOCAB_SIZE and vocab["<|startoftext|>"] == BOS_ID and vocab["<|endoftext|>"] == EOS_ID
    assert vocab["miku</w>"] == tok.convert_tokens_to_ids("miku</w>")
