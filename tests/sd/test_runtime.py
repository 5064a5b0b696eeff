"""The device choices (`sd.runtime`): pure decisions, then how `SDParts` applies them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tiframework.config import ModelConfig, load_config
from tiframework.errors import UserError
from tiframework.sd.models import unet_parameters
from tiframework.sd.runtime import (
    SD15_SIZED,
    Machine,
    detect_machine,
    resolve_checkpointing,
    resolve_dtype,
    resolve_precision,
    resolve_runtime,
)

CPU = Machine("cpu")
AMPERE = Machine.cuda(bf16=True)
TURING = Machine.cuda(bf16=False)  # e.g. a T4 or a GTX 16xx: float16 only
SD15 = 859_520_964  # the SD 1.5 UNet's parameters
TOY = 1_489_028


@pytest.mark.parametrize(("requested", "machine", "expected"), [
    ("auto", CPU, "32-true"), ("bf16", CPU, "32-true"), ("auto", AMPERE, "bf16-mixed"),
    ("auto", TURING, "16-mixed"), ("fp16", AMPERE, "16-mixed"), ("32", AMPERE, "32-true"),
])
def test_precision(requested, machine, expected):
    assert resolve_precision(requested, machine) == expected


@pytest.mark.parametrize(("requested", "machine", "precision", "expected"), [
    ("auto", CPU, "32-true", "float32"),
    ("auto", AMPERE, "bf16-mixed", "bfloat16"),
    ("auto", TURING, "16-mixed", "float16"),
    ("auto", AMPERE, "32-true", "float32"),  # training.precision=32 asks for full precision
    ("float32", AMPERE, "bf16-mixed", "float32"),  # an explicit value wins...
    ("bfloat16", CPU, "32-true", "bfloat16"),  # ...on any device
])
def test_weight_dtype(requested, machine, precision, expected):
    assert resolve_dtype(requested, machine, precision) == expected


@pytest.mark.parametrize(("setting", "machine", "params", "expected"), [
    ("auto", AMPERE, SD15, True), ("auto", TURING, SD15, True), ("auto", AMPERE, TOY, False),
    ("auto", CPU, SD15, False), ("auto", AMPERE, SD15_SIZED, True), ("auto", AMPERE, SD15_SIZED - 1, False),
    (True, CPU, TOY, True), (False, AMPERE, SD15, False),
])
def test_checkpointing(setting, machine, params, expected):
    assert resolve_checkpointing(setting, machine, params) is expected


def test_defaults_resolve_to_the_small_gpu_settings_for_sd15_and_plain_float32_on_a_cpu():
    cfg = load_config(None, ["model.preset=sd15-random"])
    gpu = resolve_runtime(cfg, AMPERE, SD15)
    assert (gpu.weight_dtype, gpu.precision, gpu.gradient_checkpointing, gpu.compile, gpu.offload_vae) == \
        ("bfloat16", "bf16-mixed", True, False, True)
    assert gpu.dtype == torch.bfloat16
    cpu = resolve_runtime(cfg, CPU, SD15)
    assert (cpu.weight_dtype, cpu.precision, cpu.gradient_checkpointing, cpu.offload_vae) == \
        ("float32", "32-true", False, False)
    off = resolve_runtime(load_config(None, ["model.dtype=float32", "training.gradient_checkpointing=false",
                                             "training.offload_vae=false", "training.compile=true"]), AMPERE, SD15)
    assert (off.weight_dtype, off.gradient_checkpointing, off.offload_vae, off.compile) == \
        ("float32", False, False, True)
    assert gpu.describe()["vectors_dtype"] == "float32"


def test_checkpointing_key_takes_auto_or_a_boolean():
    assert load_config(None, ["training.gradient_checkpointing=true"]).training.gradient_checkpointing is True
    assert load_config(None, []).training.gradient_checkpointing == "auto"
    with pytest.raises(UserError, match="training.gradient_checkpointing"):
        load_config(None, ["training.gradient_checkpointing=sometimes"])
    with pytest.raises(UserError, match="model.dtype"):
        load_config(None, ["model.dtype=float64"])


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    with pytest.raises(UserError, match="training.device"):
        detect_machine("cuda")
    assert detect_machine("auto") == CPU


def test_unet_size_comes_from_the_config_alone(tiny_parts):
    assert unet_parameters(ModelConfig(preset="tiny")) == sum(p.numel() for p in tiny_parts.unet.parameters())
    assert unet_parameters(ModelConfig(preset="sd15-random")) == SD15


def test_gradient_checkpointing_recomputes_unet_and_text_encoder_blocks(make_tiny_parts):
    """With checkpointing on, the blocks' insides run again in the backward pass; the frozen
    text encoder stays in eval mode (no dropout is switched on) apart from the checkpoint flags."""
    parts = make_tiny_parts()
    from tiframework.sd.text import encode_prompts

    inner = [parts.unet.down_blocks[0].attentions[0].transformer_blocks[0].ff,
             parts.unet.down_blocks[0].resnets[0].conv1, parts.text_encoder.text_model.encoder.layers[0].mlp
             if hasattr(parts.text_encoder, "text_model") else parts.text_encoder.encoder.layers[0].mlp]
    calls = [0] * len(inner)
    for i, m in enumerate(inner):
        # Pre-hooks: a recomputation stops as soon as it has what the backward needs, so a
        # forward hook at the end of a block may never run again.
        m.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))

    def step() -> list[int]:
        calls[:] = [0] * len(inner)
        vectors = torch.zeros(2, parts.width, requires_grad=True)
        cond = encode_prompts(parts, ["1girl, tiny_ti"], 1, "tiny_ti", vectors)
        latents = torch.randn(1, 4, 16, 16)
        parts.unet(latents, torch.tensor([10]), cond).sample.square().mean().backward()
        assert vectors.grad is not None and vectors.grad.abs().sum() > 0
        return list(calls)

    assert step() == [1, 1, 1]
    parts.set_gradient_checkpointing(True)
    assert parts.gradient_checkpointing()
    # The resnet before the first cross-attention gets no gradient (nothing it sees is
    # trained), so it is not recomputed; the blocks after it are.
    assert step() == [2, 1, 2]
    dropouts = [m for m in parts.text_encoder.modules() if isinstance(m, torch.nn.Dropout)]
    assert not any(m.training for m in dropouts)
    parts.set_gradient_checkpointing(False)
    assert step() == [1, 1, 1]
    assert [n for n, m in parts.text_encoder.named_modules() if m.training] == []


def test_attention_is_pytorch_sdpa_everywhere(tiny_parts):
    # diffusers' AttnProcessor2_0 calls F.scaled_dot_product_attention; transformers' "sdpa" too.
    assert tiny_parts.attention() == {"unet_vae": "AttnProcessor2_0", "text_encoder": "sdpa"}


def test_config_show_prints_the_resolved_choices_as_comments(capsys):
    import yaml

    from tiframework.cli import main
    from tiframework.config import config_from_dict

    quickstart = Path(__file__).parents[2] / "experiments" / "quickstart.yaml"
    assert main(["config", "show", str(quickstart), "model.preset=sd15-random", "training.device=cpu"]) == 0
    out = capsys.readouterr().out
    assert "# resolved for preset sd15-random (859.5M UNet parameters):" in out
    assert "#   on this CPU: model.dtype=float32 training.precision=32-true " \
           "training.gradient_checkpointing=false" in out
    assert "model.dtype=bfloat16 training.precision=bf16-mixed training.gradient_checkpointing=true" in out
    assert config_from_dict(yaml.safe_load(out)).model.dtype == "auto"  # the comments leave a loadable config
