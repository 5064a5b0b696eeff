"""A tiny WD1.4-shaped ONNX tagger built with onnx.helper, with outputs known exactly.

The model has the real tagger's signature (NHWC float32 [batch, S, S, 3] in,
[batch, n_tags] probabilities out) and computes each tag's probability as a linear
function of four features of its input: the mean of channel 0, 1 and 2 (B, G, R
after the RGB->BGR swap) and the mean of the left half. Some tags are constants
(`long_hair` is always 0.4, `1girl` always 0.3), which makes recall exact in tests.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from tiframework.data.wd14 import TagRow

SIDE = 32
# name, category, weights over features [B, G, R, left-half mean] (all 0..1), bias
TAGS = [
    ("general", 9, (0, 0, 0, 0), 0.1),
    ("sensitive", 9, (0, 0, 0, 0), 0.6),
    ("questionable", 9, (0, 0, 0, 0), 0.2),
    ("explicit", 9, (0, 0, 0, 0), 0.1),
    ("red_theme", 0, (0, 0, 1, 0), 0.0),
    ("blue_theme", 0, (1, 0, 0, 0), 0.0),
    ("white_background", 0, (1 / 3, 1 / 3, 1 / 3, 0), 0.0),
    ("left_light", 0, (0, 0, 0, 0.9), 0.0),
    ("^_^", 0, (0, 0, 0, 0), 0.5),
    ("hatsune_miku_(cosplay)", 4, (0, 0, 0.9, 0), 0.0),
    ("long_hair", 0, (0, 0, 0, 0), 0.4),
    ("1girl", 0, (0, 0, 0, 0), 0.3),
    ("\\m/", 0, (0, 0, 0, 0), 0.36),
    ("character_low", 4, (0, 0, 0, 0), 0.8),
]
ROWS = [TagRow(name, cat) for name, cat, _, _ in TAGS]
RED = r"red theme, hatsune miku \(cosplay\), ^_^, long hair, \\m/"
BLUE = r"blue theme, ^_^, long hair, \\m/"


def build_model(path: Path, batch: int | None = None, layout: str = "nhwc", out_rank: int = 2) -> Path:
    """Write the test tagger to `path`. layout="nchw" / out_rank=3 give broken variants."""
    n = len(TAGS)
    shape = [batch, SIDE, SIDE, 3] if layout == "nhwc" else [batch, 3, SIDE, SIDE]
    weights = np.array([t[2] for t in TAGS], dtype=np.float32).T  # (4, n)
    consts = {
        "scale": np.array(1 / 255, dtype=np.float32),
        "starts": np.array([0], dtype=np.int64),
        "ends": np.array([SIDE // 2], dtype=np.int64),
        "axes": np.array([2 if layout == "nhwc" else 3], dtype=np.int64),
        "flat": np.array([-1, 1], dtype=np.int64),
        "W": weights,
        "b": np.array([t[3] for t in TAGS], dtype=np.float32),
        "lo": np.array(0, dtype=np.float32),
        "hi": np.array(1, dtype=np.float32),
    }
    nodes = [
        helper.make_node("Mul", ["input_1:0", "scale"], ["xs"]),
        helper.make_node("ReduceMean", ["xs"], ["means"], axes=[1, 2] if layout == "nhwc" else [2, 3], keepdims=0),
        helper.make_node("Slice", ["xs", "starts", "ends", "axes"], ["left"]),  # (N, S, S/2, 3)
        helper.make_node("ReduceMean", ["left"], ["left_mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["left_mean", "flat"], ["left_col"]),  # (N, 1)
        helper.make_node("Concat", ["means", "left_col"], ["features"], axis=1),  # (N, 4)
        helper.make_node("MatMul", ["features", "W"], ["logits"]),
        helper.make_node("Add", ["logits", "b"], ["raw"]),
        helper.make_node("Clip", ["raw", "lo", "hi"], ["probs" if out_rank == 3 else "predictions_sigmoid"]),
    ]
    out_shape = [batch, n]
    if out_rank == 3:
        consts["unsq"] = np.array([2], dtype=np.int64)
        nodes.append(helper.make_node("Unsqueeze", ["probs", "unsq"], ["predictions_sigmoid"]))
        out_shape = [batch, n, 1]
    graph = helper.make_graph(
        nodes,
        "tiny_wd14",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, out_shape)],
        initializer=[onnx.numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def write_csv(path: Path, tags=TAGS, header=("tag_id", "name", "category", "count")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i, (name, cat, _, _) in enumerate(tags):
            writer.writerow([i, name, cat, 1000 - i][: len(header)])
    return path
