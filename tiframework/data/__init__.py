"""Datasets: folders of images with same-stem `.txt` captions, and the tools around them.

- `images`: safe image and caption reading (every other module reads through it);
- `sources`: `data.path` / `eval.reference` as a folder or a `toyworld:` spec;
- `templates`: prompt templates (`[name]`, `[filewords]`), read without torch;
- `dataset`: buckets, the seeded sample stream; `latents`: the VAE latent cache;
- `masks`: loss masks (alpha channels, `-masklabel.png` files) on the latent grid;
- `tags`: tag statistics and pruned dataset variants; `tagger`: the `tag` command over a folder;
  `wd14`: a local WD1.4 ONNX tagger model (`model.onnx` + `selected_tags.csv`);
- `lint`: what is wrong with a dataset before training.
"""
