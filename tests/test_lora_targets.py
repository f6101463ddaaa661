"""LoRA targets that fit the model: all-linear by default, lists checked against the model before writing anything."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig

import tokrl
from tests.model_families import FAMILIES, build_family_model, save_family_model
from tokrl.config import PAPER_LORA_TARGETS, load_config
from tokrl.models.lora_targets import (
    check_lora_targets,
    check_lora_targets_by_name,
    linear_layer_names,
    model_config,
    model_skeleton,
    resolve_lora_targets,
)
from tokrl.models.names import ALL_LINEAR

# The leaf names all-linear resolves to per family: attention + MLP projections, never lm_head or an embedding.
LLAMA_LIKE = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
EXPECTED_LEAVES = {
    **{name: LLAMA_LIKE for name in FAMILIES},
    "phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},  # fused projections
    "gpt2": {"c_attn", "c_proj", "c_fc"},  # Conv1D layers
    "qwen2-moe": LLAMA_LIKE | {"shared_expert_gate"},  # the shared expert's MLP (experts are fused parameters)
    "mixtral": {"q_proj", "k_proj", "v_proj", "o_proj"},  # experts fused, the router a custom module
}


def test_config_default_is_all_linear_and_the_paper_preset_keeps_its_modules():
    assert load_config().lora.target_modules == [ALL_LINEAR]
    assert load_config("svamp-qwen2-1.5b").lora.target_modules == list(PAPER_LORA_TARGETS)
    assert load_config(lora_target_modules="q_proj,v_proj").lora.target_modules == ["q_proj", "v_proj"]
    with pytest.raises(ValueError, match="lora_target_modules: 'all-linear' stands alone, got all-linear,q_proj"):
        load_config(lora_target_modules="all-linear,q_proj")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_all_linear_is_every_linear_layer_but_the_head(family):
    model, _ = build_family_model(family)
    names = resolve_lora_targets(model, [ALL_LINEAR])
    assert {name.rsplit(".", 1)[-1] for name in names} == EXPECTED_LEAVES[family]
    modules = dict(model.named_modules())
    head = model.get_output_embeddings()
    assert all(modules[name] is not head for name in names)
    layers = model.config.get_text_config().num_hidden_layers
    assert all(sum(f".{i}." in name for name in names) == len(names) // layers for i in range(layers))


def test_a_list_passes_through_and_every_entry_must_exist():
    model, _ = build_family_model("gpt2")
    assert resolve_lora_targets(model, ["c_attn"]) == ["c_attn"]
    check_lora_targets(model, ["c_attn", "h.0.mlp.c_fc"])  # peft's rule: equal, or a "."-suffix of the name
    # "ttn" ends the text "h.0.attn" but is not a "."-separated suffix of any module name
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel has no module named 'q_proj', 'ttn'.*c_attn, c_fc, c_proj"):
        check_lora_targets(model, ["q_proj", "c_attn", "ttn"])


def test_the_skeleton_has_the_model_modules_and_no_memory(tmp_path):
    path = save_family_model("phi3", tmp_path / "phi3")
    skeleton = model_skeleton(model_config(str(path)))
    assert linear_layer_names(skeleton) == linear_layer_names(build_family_model("phi3")[0])
    assert all(p.device.type == "meta" for p in skeleton.parameters())


def test_check_by_name_skips_what_it_cannot_read_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert model_config("no-such-org/no-such-model") is None
    check_lora_targets_by_name("no-such-org/no-such-model", ["anything"])  # checked after loading instead
    with pytest.raises(ValueError, match="stands alone"):
        check_lora_targets_by_name("no-such-org/no-such-model", ["all-linear", "q_proj"])


def test_train_refuses_missing_targets_before_anything_is_written(tmp_path):
    """The paper's Qwen2 names on a GPT-2 model: one line naming them, before the warm start writes anything."""
    path = save_family_model("gpt2", tmp_path / "gpt2")
    out = tmp_path / "run"
    with pytest.raises(ValueError) as info:
        tokrl.train(
            model=str(path),
            output_dir=str(out),
            lora_target_modules=list(PAPER_LORA_TARGETS),
            steps=1,
            sft_steps=1,
            sft_batch_size=2,
        )  # without the early check, the warm start would write
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("lora_target_modules: GPT2LMHeadModel has no module named 'q_proj', 'k_proj'")
    assert "its linear layers are c_attn, c_fc, c_proj" in message
    assert not out.exists()


def test_tiny_config_skeleton_matches_the_tiny_model():
    from tokrl.models.tiny import build_tiny_model

    assert linear_layer_names(model_skeleton(model_config("tiny"))) == linear_layer_names(build_tiny_model()[0])
    assert isinstance(model_config("tiny"), type(AutoConfig.for_model("qwen2")))
    assert torch.get_default_device().type == "cpu"  # the meta device context did not leak
