"""Where an embedding's name sits in a prompt: one rule for training, creation and lint.

Kept free of torch so light commands (`tiframework lint`) can use it.
"""

from __future__ import annotations

import re


def name_pattern(name: str) -> re.Pattern[str]:
    """The embedding name as a whole word, case-insensitive (CLIP lowercases anyway)."""
    return re.compile(rf"(?<![\w]){re.escape(name)}(?![\w])", re.IGNORECASE)
