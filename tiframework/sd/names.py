"""Embedding names: the one rule for what a name may be, and where it sits in a prompt.

A name lives in three places at once: prompts (SD's tokenizer reads it after ftfy and
Unicode normalisation), file names (`<name>-<step>.pt.optim` and its temporary sibling
must fit the file system) and peers' embedding folders (A1111 keeps only letters, digits
and `._- ` when it creates one; ComfyUI finds the file by name). So a name is checked
once, here, for creation, training and resume alike, and `tiframework lint` uses the
same rule. Kept free of torch so light commands can import it.
"""

from __future__ import annotations

import re
import unicodedata

import ftfy

from tiframework.errors import UserError

# Bytes, not characters: file systems limit names to 255 bytes, and a checkpoint name adds
# "-<step>.pt.optim" plus the temporary-file affixes of an atomic write (~30 bytes).
MAX_NAME_BYTES = 100
ALLOWED_PUNCTUATION = "._-"
RULE = "use letters, digits, '_', '-' and '.' (a name is also a file name and a prompt word)"
_NAMED = {",": "a comma: captions are split at commas", " ": "a space: the name would be two prompt words",
          "\n": "a line break", "\r": "a carriage return", "\t": "a tab", "\0": "a NUL byte",
          "/": "a path separator", "\\": "a path separator", ":": "not allowed in file names on Windows"}


def tokenizer_view(text: str) -> str:
    """`text` as SD's tokenizer sees it: ftfy's fixes (full-width letters, ligatures,
    mojibake), then NFKC (superscripts, compatibility forms)."""
    return unicodedata.normalize("NFKC", ftfy.fix_text(text))


def check_name_text(name: str, what: str = "embedding name") -> str:
    """The stripped name, or a UserError naming the first character or limit it breaks.

    The rule: after stripping, the name must read the same to SD's tokenizer as it is
    written (else prompts and files would disagree: `ｍｉｋｕ` is `miku` in a prompt),
    start with a letter or digit, use only letters, digits and `._-`, and stay within
    `MAX_NAME_BYTES` bytes of UTF-8.
    """
    clean = name.strip()
    if not clean:
        raise UserError(f"{what} is empty; pick a made-up word such as 'mychar'")
    seen = tokenizer_view(clean)
    if seen != clean:
        raise UserError(f"{what} {clean!r} reads as {seen!r} to SD's tokenizer (ftfy + NFKC); "
                        f"name it {seen!r} so prompts, files and the vocabulary check agree")
    for char in clean:
        if not (char.isalnum() or char in ALLOWED_PUNCTUATION):
            why = _NAMED.get(char) or unicodedata.name(char, f"U+{ord(char):04X}").lower()
            raise UserError(f"{what} {clean!r} contains {char!r} ({why}); {RULE}")
    if not clean[0].isalnum():
        raise UserError(f"{what} {clean!r} starts with {clean[0]!r}; start it with a letter or digit "
                        "(a leading '.' hides the files, a leading '-' reads as a command-line option)")
    size = len(clean.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise UserError(f"{what} is {len(clean)} characters ({size} bytes of UTF-8); keep it within "
                        f"{MAX_NAME_BYTES} bytes, since checkpoint file names add '-<step>.pt.optim' to it")
    return clean


def name_pattern(name: str) -> re.Pattern[str]:
    """The embedding name as a whole word, case-insensitive (CLIP lowercases anyway)."""
    return re.compile(rf"(?<![\w]){re.escape(name)}(?![\w])", re.IGNORECASE)
