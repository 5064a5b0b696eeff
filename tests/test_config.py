"""The config schema: shipped configs load against the real code, and its rules hold.

Every YAML in `experiments/` and `sweeps/` is parsed here, so a renamed field breaks
CI rather than a user's overnight sweep.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tiframework.config import (
    ExperimentConfig,
    describe_keys,
    load_config,
    parse_overrides,
    save_config,
    with_overrides,
)
from tiframework.errors import UserError
from tiframework.sweeps.schema import load_sweep

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").rglob("*.yaml")) + sorted((ROOT / "experiments").rglob("*.yml"))
SWEEPS = sorted((ROOT / "sweeps").rglob("*.yaml")) + sorted((ROOT / "sweeps").rglob("*.yml"))


def write(path: Path, data: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


# ------------------------------------------------------------------ shipped configs


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_experiment_loads(path):
    if yaml.safe_load(path.read_text(encoding="utf-8")).get("model", {}).get("preset", "") is None:
        # a config for the user's own model (the guide's) refuses to run without one, naming the key
        with pytest.raises(UserError, match=r"model: no model given; .*model\.path="):
            load_config(path)
        cfg = load_config(path, ["model.path=/models/sd15.safetensors"])
    else:
        cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.logging.experiment  # named after the file unless it says otherwise


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_sweep_loads(path):
    # A renamed or missing loader fails here (an ImportError), never skips.
    assert load_sweep(path) is not None


# ------------------------------------------------------------------ extends


def test_extends_merges_sections_and_resolves_relative_to_the_file(tmp_path):
    write(tmp_path / "base" / "base.yaml", {
        "training": {"max_steps": 100, "accumulate": 5, "learning_rate": "0.0005:5000, 0.0001:10000"},
        "embedding": {"name": "basechar", "vectors_per_token": 8},
    })
    child = write(tmp_path / "runs" / "child.yaml", {
        "extends": "../base/base.yaml",
        "training": {"max_steps": 20},
        "embedding": {"vectors_per_token": 2},
    })
    cfg = load_config(child)
    assert cfg.training.max_steps == 20 and cfg.training.accumulate == 5  # sibling key kept
    assert cfg.training.learning_rate == "0.0005:5000, 0.0001:10000"
    assert (cfg.embedding.name, cfg.embedding.vectors_per_token) == ("basechar", 2)
    assert cfg.logging.experiment == "child"


def test_extends_chain_and_cycle(tmp_path):
    write(tmp_path / "a.yaml", {"training": {"max_steps": 1}})
    write(tmp_path / "b.yaml", {"extends": "a.yaml", "training": {"batch_size": 2}})
    c = write(tmp_path / "c.yaml", {"extends": "b.yaml", "training": {"accumulate": 3}})
    t = load_config(c).training
    assert (t.max_steps, t.batch_size, t.accumulate) == (1, 2, 3)

    write(tmp_path / "x.yaml", {"extends": "y.yaml"})
    y = write(tmp_path / "y.yaml", {"extends": "x.yaml"})
    with pytest.raises(UserError, match="cycle"):
        load_config(y)


def test_extends_missing_base(tmp_path):
    child = write(tmp_path / "child.yaml", {"extends": "nope.yaml"})
    with pytest.raises(UserError, match=r"nope\.yaml: config file not found"):
        load_config(child)


# ------------------------------------------------------------------ overrides


def test_dotted_overrides_are_parsed_as_yaml(tmp_path):
    path = write(tmp_path / "exp.yaml", {"training": {"max_steps": 5000}})
    cfg = load_config(path, ["training.max_steps=20", "preview.seeds=[1, 2]", "embedding.name=zorblax",
                             "training.learning_rate=0.001", "data.shuffle_tags=false", "resume=runs/x.pt"])
    assert cfg.training.max_steps == 20
    assert cfg.preview.seeds == [1, 2]
    assert cfg.embedding.name == "zorblax"
    assert cfg.training.learning_rate == "0.001"  # numbers become schedule strings
    assert cfg.data.shuffle_tags is False
    assert cfg.resume == "runs/x.pt"


def test_with_overrides_copies(tmp_path):
    cfg = load_config(None)
    other = with_overrides(cfg, {"embedding.vectors_per_token": 2, "training.accumulate": 5})
    assert (other.embedding.vectors_per_token, other.training.accumulate) == (2, 5)
    assert cfg.embedding.vectors_per_token == 16  # the original is untouched


def test_malformed_override():
    with pytest.raises(UserError, match="expected key=value"):
        parse_overrides(["training.max_steps"])


# ------------------------------------------------------------------ errors name the key


def test_unknown_key_names_the_key(tmp_path):
    path = write(tmp_path / "typo.yaml", {"training": {"max_step": 5}})
    with pytest.raises(UserError, match=r"typo\.yaml: training\.max_step: unknown key"):
        load_config(path)
    with pytest.raises(UserError, match=r"embedding\.vpt: unknown key"):
        load_config(None, ["embedding.vpt=4"])
    with pytest.raises(UserError, match=r"trainig: unknown key"):
        load_config(None, ["trainig.max_steps=4"])


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(UserError, match=r"training\.max_steps:"):
        load_config(None, ["training.max_steps=lots"])
    path = write(tmp_path / "bad.yaml", {"preview": {"seeds": "zero"}})
    with pytest.raises(UserError, match=r"preview\.seeds:"):
        load_config(path)
    with pytest.raises(UserError, match=r"embedding\.vectors_per_token:"):
        load_config(None, ["embedding.vectors_per_token=0"])


def test_bad_yaml_and_non_mapping(tmp_path):
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(write(tmp_path / "broken.yaml", "training: [1, 2\n"))
    with pytest.raises(UserError, match="mapping of sections"):
        load_config(write(tmp_path / "list.yaml", "- a\n- b\n"))


def test_model_needs_a_source():
    with pytest.raises(UserError, match="model.preset"):
        load_config(None, ["model.preset=null"])


# ------------------------------------------------------------------ resolved config


def test_resolved_config_round_trips(tmp_path):
    write(tmp_path / "base.yaml", {"training": {"accumulate": 5}})
    path = write(tmp_path / "exp.yaml", {"extends": "base.yaml", "embedding": {"name": "zorblax"}})
    cfg = load_config(path, ["training.max_steps=20", "preview.seeds=[3, 4]"])
    save_config(cfg, tmp_path / "out" / "config.yaml")
    back = load_config(tmp_path / "out" / "config.yaml")
    assert back == cfg
    # a resolved config stands alone: no `extends`, every key present
    text = (tmp_path / "out" / "config.yaml").read_text(encoding="utf-8")
    assert "extends" not in text and "max_steps: 20" in text



# ------------------------------------------------------------------ evaluation keys


def test_retired_plateau_keys_warn_and_are_ignored(tmp_path, caplog):
    # config.yaml of run folders made before the noise-aware plateau rule still loads
    path = write(tmp_path / "old.yaml", {"eval": {"plateau_window": 40, "plateau_epsilon": 0.005}})
    with caplog.at_level("WARNING"):
        cfg = load_config(path)
    assert "plateau_window" not in cfg.eval.model_dump()
    assert "eval.plateau_window is no longer used" in caplog.text and "eval.plateau_z" in caplog.text
    keys = {k for k, _, _ in describe_keys()}
    assert {"eval.plateau_z", "eval.plateau_patience", "eval.plateau_smoothing", "eval.selection_seeds",
            "eval.tagger", "eval.traits", "eval.trait_leak", "training.stop_on_plateau"} <= keys
    assert not {"eval.plateau_window", "eval.plateau_epsilon"} & keys


def test_selection_seeds_are_derived_disjoint_or_checked():
    assert load_config(None, ["eval.seeds=[0, 1, 2]"]).eval.selection() == [3, 4, 5]
    assert load_config(None, ["eval.seeds=[7, 2]"]).eval.selection() == [8, 9]
    assert load_config(None, ["eval.selection_seeds=[100]"]).eval.selection() == [100]
    with pytest.raises(UserError, match=r"eval: selection_seeds \[1\] are also in eval.seeds"):
        load_config(None, ["eval.selection_seeds=[1, 5]"])


def test_eval_seeds_can_follow_the_training_seed():
    on = ["eval.seeds=[0, 1, 2]", "eval.seeds_follow_training_seed=true"]
    e = load_config(None, on).eval
    assert e.for_training_seed(0).seeds == [0, 1, 2] and e.for_training_seed(0).selection() == [3, 4, 5]
    shifted = e.for_training_seed(7)
    assert shifted.seeds == [7000, 7001, 7002] and shifted.selection() == [7003, 7004, 7005]
    explicit = load_config(None, [*on, "eval.selection_seeds=[50]"]).eval.for_training_seed(2)
    assert explicit.seeds == [2000, 2001, 2002] and explicit.selection() == [2050]
    off = load_config(None, ["eval.seeds=[0, 1, 2]"]).eval
    assert off.for_training_seed(7).seeds == [0, 1, 2] and off.for_training_seed(7).selection() == [3, 4, 5]


def test_plateau_and_trait_settings_are_checked():
    with pytest.raises(UserError, match="plateau_smoothing must be odd"):
        load_config(None, ["eval.plateau_smoothing=2"])
    with pytest.raises(UserError, match="need eval.tagger"):
        load_config(None, ["eval.trait_leak=[{prompt: '[name], from behind', tags: [hat]}]"])
    with pytest.raises(UserError, match=r"eval.trait_leak.0.tags"):
        load_config(None, ["eval.tagger=x.onnx", "eval.trait_leak=[{prompt: '[name], from behind', tags: []}]"])
    # an override clears the shipped list (a mapping would have been merged into, not replaced)
    quickstart = ROOT / "experiments" / "quickstart.yaml"
    assert load_config(quickstart).eval.trait_leak
    assert load_config(quickstart, ["eval.trait_leak=[]"]).eval.trait_leak == []
    with pytest.raises(UserError, match="training.stop_on_plateau needs evaluation"):
        load_config(None, ["training.stop_on_plateau=true"])
    assert load_config(None, ["training.stop_on_plateau=true", "eval.every=10"]).training.stop_on_plateau
