"""A procedural toy world with known truth, and small SD-shaped models trained on it.

Public API: `resolve_dataset_path`, `materialize`, `CHARACTERS` (characters.py);
`AttributeClassifier`, `attribute_accuracy` (classifier.py); `build` (build.py).
Submodules import torch lazily, so `import tiframework.toyworld` stays cheap.
"""

from tiframework.toyworld.characters import CHARACTERS, is_spec, materialize, resolve_dataset_path

__all__ = ["CHARACTERS", "is_spec", "materialize", "resolve_dataset_path"]
