"""Datasets: folders of images with same-stem `.txt` captions, and the tools around them.

- `images`: safe image and caption reading (every other module reads through it);
- `sources`: `data.path` / `eval.reference` as a folder or a `toyworld:` spec;
- `dataset`: buckets, templates, the seeded sample stream; `latents`: the VAE latent cache;
- `tags`: tag statistics and pruned dataset variants; `tagger`: the WD1.4 ONNX tagger;
- `lint`: what is wrong with a dataset before training.
"""
