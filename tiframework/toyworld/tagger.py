"""A WD1.4-shaped tagger for the toy world, built from the attribute classifier.

Real models get trait recall from a WD1.4 tagger (`model.onnx` + `selected_tags.csv`, run
by `data.wd14`). So that the toy world exercises that same code path, not a shortcut, this
module writes the committed attribute classifier out as such a pair: an ONNX graph with
the tagger's signature (NHWC float32 BGR 0..255 in, `[batch, n_tags]` probabilities out)
whose tags are booru tags spelled as the toy captions are (`pink_hair`, `green_dress`,
`hat`, `from_behind`, plus `star_(symbol)` for the untagged emblem and the four rating
tags a WD1.4 CSV starts with).

A tag's probability is the classifier's softmax probability of that value (an outfit tag
`green_dress`: P(colour green) x P(type dress)), so thresholds mean what they mean for a
real tagger. The graph is plain ONNX operators written with `onnx.helper` (GroupNorm
spelled out), built in a second from the weights; `toy_tagger_files` caches it under
`.cache/toyworld/` and rebuilds it when the weights or this code change. Nothing is
downloaded, nothing needs committing.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tiframework.fileio import atomic_dir
from tiframework.toyworld.classifier import WEIGHTS, AttributeClassifier
from tiframework.toyworld.world import GROUPS, SIZE

MODEL_FILE, TAGS_FILE = "model.onnx", "selected_tags.csv"
INPUT, OUTPUT = "input_1:0", "predictions_sigmoid"
RATINGS = {"general": 0.95, "sensitive": 0.04, "questionable": 0.005, "explicit": 0.005}
RATING, GENERAL = 9, 0  # selected_tags.csv categories
# Single-value groups: tag name for each value that has one (front view and "no" have none).
_SIMPLE: dict[str, dict[str, str]] = {
    "hair_color": {v: f"{v}_hair" for v in GROUPS["hair_color"]},
    "hair_length": {v: f"{v}_hair" for v in GROUPS["hair_length"]},
    "eye_color": {v: f"{v}_eyes" for v in GROUPS["eye_color"] if v != "hidden"},
    "hat": {"yes": "hat"}, "glasses": {"yes": "glasses"}, "hair bow": {"yes": "hair_bow"},
    "gloves": {"yes": "gloves"}, "view": {"from side": "from_side", "from behind": "from_behind"},
    "background": {v: v.replace(" ", "_") for v in GROUPS["background"]},
    "emblem": {"yes": "star_(symbol)"},
}


class _Graph:
    """A small helper to add nodes and constants with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.consts: list[onnx.TensorProto] = []
        self.n = 0

    def const(self, value: np.ndarray, hint: str = "c") -> str:
        self.n += 1
        name = f"{hint}_{self.n}"
        self.consts.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op: str, inputs: list[str], **attrs) -> str:
        self.n += 1
        out = f"{op.lower()}_{self.n}"
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out


def _group_norm(g: _Graph, x: str, weight: np.ndarray, bias: np.ndarray, groups: int, eps: float) -> str:
    """torch.nn.GroupNorm from basic operators (opset 17 has no GroupNormalization)."""
    grouped = g.op("Reshape", [x, g.const(np.array([0, groups, -1], np.int64), "shape")])
    mean = g.op("ReduceMean", [grouped], axes=[2], keepdims=1)
    centred = g.op("Sub", [grouped, mean])
    var = g.op("ReduceMean", [g.op("Mul", [centred, centred])], axes=[2], keepdims=1)
    std = g.op("Sqrt", [g.op("Add", [var, g.const(np.array(eps, np.float32), "eps")])])
    normed = g.op("Reshape", [g.op("Div", [centred, std]), g.op("Shape", [x])])
    scaled = g.op("Mul", [normed, g.const(weight.reshape(-1, 1, 1).astype(np.float32), "gamma")])
    return g.op("Add", [scaled, g.const(bias.reshape(-1, 1, 1).astype(np.float32), "beta")])


def _silu(g: _Graph, x: str) -> str:
    return g.op("Mul", [x, g.op("Sigmoid", [x])])


def _columns(g: _Graph, probs: str, indices: list[int]) -> str:
    return g.op("Gather", [probs, g.const(np.array(indices, np.int64), "idx")], axis=1)


def tag_table() -> list[tuple[str, int, str, str | tuple[str, str]]]:
    """(tag, category, group, value) per output, in output order; an outfit's value is
    (colour, type). Ratings first, as in WD1.4's selected_tags.csv."""
    table: list[tuple[str, int, str, str | tuple[str, str]]] = [(r, RATING, "rating", r) for r in RATINGS]
    for group, names in _SIMPLE.items():
        table += [(tag, GENERAL, group, value) for value, tag in names.items()]
    table += [(f"{c}_{t}", GENERAL, "outfit", (c, t)) for c in GROUPS["outfit_color"] for t in GROUPS["outfit_type"]]
    return table


def build_onnx(classifier: AttributeClassifier) -> onnx.ModelProto:
    """The classifier as a WD1.4-shaped ONNX model (input side 64, outputs in `tag_table` order)."""
    state = {k: v.detach().float().numpy() for k, v in classifier.net.state_dict().items()}
    body = classifier.net.body
    g = _Graph()
    rgb = g.op("Gather", [INPUT, g.const(np.array([2, 1, 0], np.int64), "bgr")], axis=3)  # BGR -> RGB
    x = g.op("Sub", [g.op("Div", [rgb, g.const(np.array(127.5, np.float32))]), g.const(np.array(1.0, np.float32))])
    x = g.op("Transpose", [x], perm=[0, 3, 1, 2])  # (N, 3, 64, 64) in [-1, 1], as the classifier sees it
    for i in range(0, 12, 3):  # body: (Conv, GroupNorm, SiLU) x 4
        conv, norm = body[i], body[i + 1]
        x = g.op("Conv", [x, g.const(state[f"body.{i}.weight"], "w"), g.const(state[f"body.{i}.bias"], "b")],
                 strides=list(conv.stride), pads=[conv.padding[0]] * 2 + [conv.padding[1]] * 2)
        x = _silu(g, _group_norm(g, x, state[f"body.{i + 1}.weight"], state[f"body.{i + 1}.bias"],
                                 norm.num_groups, norm.eps))
    x = g.op("Flatten", [x], axis=1)  # (N, 2048), the same C, H, W order as torch's Flatten
    h = _silu(g, g.op("Gemm", [x, g.const(state["body.13.weight"], "w"), g.const(state["body.13.bias"], "b")],
                      transB=1))
    probs = {}
    for group, values in GROUPS.items():
        key = group.replace(" ", "_")
        logits = g.op("Gemm", [h, g.const(state[f"heads.{key}.weight"], "w"), g.const(state[f"heads.{key}.bias"], "b")],
                      transB=1)
        probs[group] = (g.op("Softmax", [logits], axis=1), values)
    parts = []
    any_col = _columns(g, probs["hat"][0], [0])  # (N, 1): gives the constant ratings a batch dimension
    zero = g.op("Mul", [any_col, g.const(np.array(0.0, np.float32))])
    parts.append(g.op("Add", [zero, g.const(np.array([list(RATINGS.values())], np.float32), "ratings")]))
    for group, names in _SIMPLE.items():
        out, values = probs[group]
        parts.append(_columns(g, out, [values.index(v) for v in names]))
    colour = g.op("Unsqueeze", [probs["outfit_color"][0], g.const(np.array([2], np.int64))])  # (N, 7, 1)
    kind = g.op("Unsqueeze", [probs["outfit_type"][0], g.const(np.array([1], np.int64))])  # (N, 1, 2)
    parts.append(g.op("Reshape", [g.op("Mul", [colour, kind]), g.const(np.array([0, -1], np.int64), "shape")]))
    g.nodes.append(helper.make_node("Concat", parts, [OUTPUT], axis=1))
    n_tags = len(tag_table())
    graph = helper.make_graph(
        g.nodes, "toyworld_wd14",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [None, SIZE, SIZE, 3])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [None, n_tags])],
        initializer=g.consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tiframework")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_tag_csv(path: Path) -> None:
    """selected_tags.csv in WD1.4's columns (tag_id, name, category, count)."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i, (tag, category, _, _) in enumerate(tag_table()):
            writer.writerow([i, tag, category, 0])


def build_toy_tagger(folder: Path, weights: Path = WEIGHTS) -> Path:
    """Write `model.onnx` + `selected_tags.csv` into `folder` (atomically); return the folder."""
    model = build_onnx(AttributeClassifier(weights))
    with atomic_dir(Path(folder), keep_concurrent=True) as tmp:
        onnx.save(model, str(tmp / MODEL_FILE))
        write_tag_csv(tmp / TAGS_FILE)
        (tmp / ".stamp").write_text(_stamp(weights))
    return Path(folder)


def _stamp(weights: Path) -> str:
    """Hash of the classifier weights and this builder: a stale cached tagger is rebuilt."""
    digest = hashlib.sha256((Path(weights) / "model.safetensors").read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:16]


def toy_tagger_files(cache_root: Path, weights: Path = WEIGHTS) -> tuple[Path, Path]:
    """(model.onnx, selected_tags.csv) of the toy tagger in `cache_root/tagger`, built on first use."""
    folder = Path(cache_root) / "tagger"
    stamp = folder / ".stamp"
    if not (stamp.is_file() and stamp.read_text() == _stamp(weights) and (folder / MODEL_FILE).is_file()):
        build_toy_tagger(folder, weights)
    return folder / MODEL_FILE, folder / TAGS_FILE
