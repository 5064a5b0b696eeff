"""Project-registered open_clip model configs (one open_clip-format JSON per model).

Every `*.json` here is registered with open_clip by `tiframework.evaluation.clipscore`, so
`eval.clip_model: tif-tiny-clip` works like a built-in name. This is a package only so
that setuptools ships the JSON files as package data.
"""
