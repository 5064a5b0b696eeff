"""A procedural toy world with known truth, and small SD-shaped models trained on it.

- `world`, `draw`: attributes, captions and the PIL drawing of one image;
- `characters`: named characters, dataset specs (`toyworld:kiri?pruned=1`) and their folders;
- `classifier`: the attribute classifier, the ground truth for generated images;
- `tagger`: that classifier written out as a WD1.4-shaped ONNX tagger (trait recall, `tag`);
- `nets`, `train_sd`, `clip`, `batches`, `build`: the models and `tiframework toyworld build`.

The rest of tiframework uses it through `data.sources` (dataset specs) and
`evaluation.evaluator` (attribute accuracy), `evaluation.traits` (the toy tagger); `sd.models`
loads its weights folder.
"""
