"""Paths inside config files: relative to the file, as `extends:` is.

An input path written in an experiment file (`data.path: ../data/mychar`) resolves from the
file's folder, so the experiment works from any directory. Outputs (`logging.runs_dir`,
`data.cache_dir`) and command-line overrides stay relative to the current directory, and
`toyworld:` specs, `~/` paths and the `toyworld` keyword are left as they are.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

FILE_RELATIVE_KEYS = ("model.path", "model.preview_vae", "data.path", "data.template_file", "eval.reference",
                      "eval.clip_pretrained", "eval.tagger", "eval.tagger_tags", "resume")
_NOT_A_PATH = re.compile(r"^([A-Za-z][\w+.-]*:|~|toyworld$)")  # `toyworld:kiri`, `~/x`, the `toyworld` keyword


def anchor_paths(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """`data` with the relative input paths of FILE_RELATIVE_KEYS made absolute from `folder`."""
    for key in FILE_RELATIVE_KEYS:
        *parents, leaf = key.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        value = node.get(leaf) if isinstance(node, dict) else None
        if isinstance(value, str) and value.strip() and not _NOT_A_PATH.match(value) and not Path(value).is_absolute():
            node[leaf] = str((folder / value).resolve())
    return data
