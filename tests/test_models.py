"""Models: tiny model, loading by path / hub id, LoRA wrapping, the LM-head guard, hidden states, dtypes."""

from __future__ import annotations

import re
import time

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

from tokrl.config import PAPER_LORA_TARGETS
from tokrl.models.forward import hidden_states, lm_head_weight
from tokrl.models.loading import load_model, resolve_dtype
from tokrl.models.lora import apply_lora, check_lm_head_not_adapted, trainable_parameter_count
from tokrl.models.tiny import build_tiny_model, tiny_config
from tokrl.models.tokenizer import VOCAB, VOCAB_SIZE

# Left-padded batch whose rows have different amounts of padding and several real tokens each: with a
# single real token attention is position-free, so wrong position ids would go unnoticed.
PROMPTS = ["Tom has 3 apples.\nHow many?", "5 + 7 =", "A bus had 12 people; 4 got off. Now:"]


def _batch(tokenizer):
    return tokenizer(PROMPTS, padding=True, return_tensors="pt")  # input_ids, attention_mask [3, L]


def _positions(attention_mask):
    return (attention_mask.cumsum(-1) - 1).clamp_min(0)  # [B, L]


def _randomise_lora(model, seed=1):
    # peft initialises lora_B to zero, so a fresh adapter is the identity; make it matter.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


# --------------------------------------------------------------------------------------------- dtype


@pytest.mark.parametrize(
    ("dtype", "device", "expected"),
    [
        (None, "cpu", torch.float32),
        ("auto", "cpu", torch.float32),
        (None, "cuda", torch.bfloat16),  # resolution only: no CUDA needed
        ("AUTO", torch.device("cuda", 0), torch.bfloat16),
        ("bf16", "cpu", torch.bfloat16),
        ("fp16", "cpu", torch.float16),
        ("fp32", "cuda", torch.float32),
        ("float32", "cpu", torch.float32),
        (torch.float64, "cpu", torch.float64),
    ],
)
def test_resolve_dtype(dtype, device, expected):
    assert resolve_dtype(dtype, device) is expected


@pytest.mark.parametrize(
    ("bad", "message"), [("fp8", "choose one of: auto, bf16"), ("", "fp16.*fp32"), (torch.int64, "floating-point")]
)
def test_resolve_dtype_rejects_bad_values(bad, message):
    with pytest.raises(ValueError, match=message):
        resolve_dtype(bad, "cpu")


# ---------------------------------------------------------------------------------------- tiny model


def test_tiny_config_defaults_and_overrides():
    config = tiny_config()
    assert config.model_type == "qwen2"
    assert config.vocab_size % 8 == 0 and VOCAB_SIZE <= config.vocab_size < VOCAB_SIZE + 8
    assert config.tie_word_embeddings is True
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)  # GQA as in Qwen2
    assert config.intermediate_size == 4 * config.hidden_size
    assert 128 <= config.hidden_size <= 256 and 2 <= config.num_hidden_layers <= 4
    assert (config.pad_token_id, config.eos_token_id) == (VOCAB["<pad>"], VOCAB["<|endoftext|>"])
    wide = tiny_config(hidden_size=64, num_hidden_layers=1)
    assert (wide.hidden_size, wide.intermediate_size, wide.num_hidden_layers) == (64, 256, 1)
    assert tiny_config(hidden_size=64, intermediate_size=100).intermediate_size == 100
    with pytest.raises(TypeError, match="hiden_size"):
        tiny_config(hiden_size=64)  # a typo must not be silently ignored
    with pytest.raises(ValueError, match="vocab_size"):
        tiny_config(vocab_size=50)


def test_build_tiny_model_is_seeded_and_tied():
    state = torch.random.get_rng_state()
    a, tok = build_tiny_model(seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG stream is untouched
    b, _ = build_tiny_model(seed=3)
    c, _ = build_tiny_model(seed=4)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.model.layers[0].self_attn.q_proj.weight, c.model.layers[0].self_attn.q_proj.weight)
    w = lm_head_weight(a)
    assert w is a.get_input_embeddings().weight  # tied: the LM head weight is the embedding
    assert w.shape == (a.config.vocab_size, a.config.hidden_size) and w.dtype == torch.float32
    assert tok.padding_side == "left" and not a.training


def test_save_and_load_by_path_gives_identical_logits(tmp_path):
    model, tok = build_tiny_model(seed=5)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(str(tmp_path))
    assert type(loaded) is type(model) and loaded_tok.padding_side == "left"
    assert lm_head_weight(loaded) is loaded.get_input_embeddings().weight  # still tied after loading
    batch = _batch(tok)
    assert torch.equal(batch["input_ids"], _batch(loaded_tok)["input_ids"])
    with torch.no_grad():
        expected = model(**batch).logits  # [3, L, V]
        got = loaded(**batch).logits  # [3, L, V]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_load_model_tiny_and_dtype_override():
    model, tok = load_model("tiny", dtype="bf16")
    assert lm_head_weight(model).dtype == torch.bfloat16
    assert (tok.pad_token_id, tok.eos_token_id, tok.padding_side) == (0, 1, "left")


def test_load_model_sets_pad_token_and_left_padding(tmp_path):
    model, tok = build_tiny_model()
    tok.padding_side = "right"
    tok.pad_token = None  # a tokenizer without pad token, like many base models
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    _, loaded_tok = load_model(str(tmp_path))
    assert loaded_tok.pad_token == loaded_tok.eos_token and loaded_tok.padding_side == "left"


def test_generate_with_pad_and_eos():
    model, tok = build_tiny_model(seed=0)
    batch = _batch(tok)
    prompt_len = batch["input_ids"].shape[1]
    with torch.no_grad():
        greedy = model.generate(**batch, max_new_tokens=6, do_sample=False)  # [3, L + 6]
    assert greedy.shape == (3, prompt_len + 6)
    # Declare row 0's first greedy token the EOS: row 0 must stop there and be padded with pad ids after.
    stop = int(greedy[0, prompt_len])
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=6, do_sample=False, eos_token_id=stop)  # [3, <= L + 6]
    assert out[0, prompt_len] == stop
    assert out[0, prompt_len + 1 :].eq(tok.pad_token_id).all()
    assert torch.equal(out[:, :prompt_len], batch["input_ids"])


# --------------------------------------------------------------------------------------- load errors


def test_offline_hub_id_gives_clear_error_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(OSError) as info:
        load_model("nonexistent-org/nonexistent-model")
    assert time.perf_counter() - start < 15  # no retry loop against an unreachable hub
    message = str(info.value)
    assert "nonexistent-org/nonexistent-model" in message
    assert "local directory" in message and "HF_HUB_OFFLINE" in message


def test_missing_local_path_gives_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_model(str(missing))


# ---------------------------------------------------------------------------------------------- LoRA


def test_apply_lora_defaults_freeze_base_and_train_only_lora():
    model, _ = build_tiny_model()
    base_total = trainable_parameter_count(model)[1]
    peft_model = apply_lora(model)
    assert isinstance(peft_model, PeftModel)
    config = peft_model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (16, 32, 0.05)
    wrapped = {name.rsplit(".", 1)[-1] for name, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
    # all-linear on Qwen2: the paper's projections in every layer, nothing else (no lm_head, no embedding)
    assert wrapped == set(PAPER_LORA_TARGETS)
    assert {name.rsplit(".", 1)[-1] for name in config.target_modules} == set(PAPER_LORA_TARGETS)
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in name or "lora_B" in name for name in trainable)
    # Expected LoRA size: r * (in + out) for each of the 7 projections in every layer.
    expected = sum(
        16 * (m.in_features + m.out_features)
        for name, m in peft_model.named_modules()
        if isinstance(m, LoraLayer) and name.rsplit(".", 1)[-1] in PAPER_LORA_TARGETS
    )
    assert trainable_parameter_count(peft_model) == (expected, base_total + expected)
    assert not lm_head_weight(peft_model).requires_grad


def test_all_linear_gives_the_tiny_model_the_paper_adapter():
    """The embedded default keeps training exactly as before all-linear: same modules, same initial weights."""
    adapters = []
    for targets in ("all-linear", PAPER_LORA_TARGETS):
        torch.manual_seed(0)  # the trainer seeds before wrapping: LoRA A is drawn in module order
        peft_model = apply_lora(build_tiny_model(seed=0)[0], target_modules=targets)
        adapters.append({k: v for k, v in peft_model.state_dict().items() if "lora_" in k})
    assert adapters[0].keys() == adapters[1].keys() and len(adapters[0]) == 2 * 7 * 2  # A, B x 7 x 2 layers
    for key, value in adapters[0].items():
        assert torch.equal(value, adapters[1][key]), key


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (
            ["q_proj", "c_attn", "c_fc"],
            "Qwen2ForCausalLM has no module named 'c_attn', 'c_fc'; its linear layers are "
            "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj",
        ),
        (["all-linear", "q_proj"], "'all-linear' stands alone"),
    ],
    ids=["gpt2-names-on-qwen2", "all-linear-mixed"],
)
def test_apply_lora_refuses_missing_targets_before_wrapping(targets, message):
    model, _ = build_tiny_model()
    with pytest.raises(ValueError, match=re.escape(message)):
        apply_lora(model, target_modules=targets)
    assert not any(isinstance(m, LoraLayer) for m in model.modules())


def test_peft_model_passes_through():
    peft_model = apply_lora(build_tiny_model()[0], r=4, alpha=8)
    assert apply_lora(peft_model) is peft_model
    assert peft_model.peft_config["default"].r == 4  # not re-wrapped with the defaults


@pytest.mark.parametrize(
    ("targets", "module"),
    [(("q_proj", "lm_head"), "lm_head"), (("embed_tokens", "v_proj"), "embed_tokens"), ("lm_head", "lm_head")],
    ids=["lm_head-target", "tied-embedding-target", "string-target"],
)
def test_apply_lora_refuses_head_targets_before_wrapping(targets, module):
    model, _ = build_tiny_model()
    with pytest.raises(ValueError, match=f"{module}.*raw LM-head weight"):
        apply_lora(model, target_modules=targets)
    assert not any(isinstance(m, LoraLayer) for m in model.modules())  # the model was left untouched


@pytest.mark.parametrize(
    "config",
    [
        LoraConfig(target_modules=["q_proj"], modules_to_save=["lm_head"]),
        LoraConfig(target_modules=["q_proj", "lm_head"]),
        LoraConfig(target_modules=["q_proj", "embed_tokens"]),
    ],
    ids=["modules_to_save", "lora-on-lm_head", "lora-on-tied-embedding"],
)
def test_peft_model_with_adapted_head_is_refused(config):
    peft_model = get_peft_model(build_tiny_model()[0], config)
    with pytest.raises(ValueError, match="refusing to adapt the LM head"):
        check_lm_head_not_adapted(peft_model)
    with pytest.raises(ValueError, match="refusing to adapt the LM head"):
        apply_lora(peft_model)


def test_untied_input_embedding_may_be_adapted():
    # Without tying, the input embedding is not the LM head, and the fused loss stays exact.
    model, _ = build_tiny_model(tie_word_embeddings=False)
    peft_model = apply_lora(model, target_modules=("q_proj", "embed_tokens"))
    check_lm_head_not_adapted(peft_model)
    assert lm_head_weight(peft_model) is peft_model.get_base_model().lm_head.weight


# ------------------------------------------------------------------------------------- hidden states


@pytest.mark.parametrize("use_lora", [False, True], ids=["plain", "peft"])
def test_hidden_states_match_logits_for_left_padding(use_lora):
    model, tok = build_tiny_model(seed=2)
    if use_lora:
        model = apply_lora(model)
        _randomise_lora(model)
    model.eval()  # LoRA dropout off
    batch = _batch(tok)
    ids, mask = batch["input_ids"], batch["attention_mask"]  # [3, L]
    head_calls, body_kwargs = [], {}
    head = model.get_output_embeddings().register_forward_hook(lambda *args: head_calls.append(1))
    # RoPE makes a constant position shift cancel up to rounding, so the position ids are checked directly.
    body = model.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: body_kwargs.update(kwargs), with_kwargs=True
    )
    with torch.no_grad():
        h = hidden_states(model, ids, mask)  # [3, L, D]
    head.remove()
    body.remove()
    assert head_calls == []  # no logits were computed
    for row in range(len(PROMPTS)):  # real tokens count 0, 1, 2, ... from the first non-pad token
        real_positions = body_kwargs["position_ids"][row][mask[row].bool()]  # [n_real]
        assert real_positions.tolist() == list(range(int(mask[row].sum())))
    w = lm_head_weight(model)  # [V, D]
    assert h.shape == (*ids.shape, w.shape[1])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).logits  # [3, L, V]
    real = mask.bool()  # [3, L]
    torch.testing.assert_close(h[real] @ w.T, logits[real], rtol=1e-5, atol=1e-5)
    # Padding invariance: each left-padded row's last state equals that of its unpadded sequence.
    for row, text in enumerate(PROMPTS):
        single = tok([text], return_tensors="pt")
        with torch.no_grad():
            alone = hidden_states(model, single["input_ids"], single["attention_mask"])  # [1, len, D]
        torch.testing.assert_close(h[row, -1], alone[0, -1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(h[row, -1] @ w.T, logits[row, -1], rtol=1e-5, atol=1e-5)


def test_hidden_states_carry_lora_gradients():
    model = apply_lora(build_tiny_model()[0])
    _randomise_lora(model)
    batch = _batch(build_tiny_model()[1])
    h = hidden_states(model, batch["input_ids"], batch["attention_mask"])  # [3, L, D]
    (h[:, -1] @ lm_head_weight(model).T).logsumexp(-1).sum().backward()
    grads = [p.grad for name, p in model.named_parameters() if "lora_A" in name]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_trainable_parameter_count_plain_model():
    model, _ = build_tiny_model()
    trainable, total = trainable_parameter_count(model)
    assert trainable == total == sum(p.numel() for p in model.parameters())
    # The tied weight is counted once, not once per module that holds it.
    assert total < sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
