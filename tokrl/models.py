"""Models: load by hub id or local path, the tiny test model, LoRA wrapping and the LM-head guard.

The trainer never asks the model for logits. It calls `hidden_states` for the final-norm hidden states
[B, L, D] and hands the selected rows, together with the raw LM-head weight from `lm_head_weight` [V, D],
to the fused log-prob kernel, with the model's logit scale / soft-cap (`tokrl.head_transform`). Two
consequences shape this module:

- Anything that changes the LM head *inside* the head module (a LoRA adapter on `lm_head`, a trainable
  copy from `modules_to_save`, or an adapter on the input embedding that a tied head shares) would be
  silently ignored by the fused loss, which reads the raw weight. `check_lm_head_not_adapted` refuses
  such models; `apply_lora` always runs it.
- Prompts are left-padded for generation, so `hidden_states` passes position ids counted over real
  tokens (as `generate` does): the first real token of every row is position 0, the positions the
  completions were sampled with. RoPE cancels a constant shift only up to rounding; other position
  schemes do not cancel it at all.

`"tiny"` names a small Qwen2-architecture model built from `tiny_config()` with the character tokenizer
of `tokrl.tokenizer`; it saves and loads back by path like any Hugging Face model.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Sequence
from urllib.parse import urlparse

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from peft.utils.other import AuxiliaryTrainingWrapper, ModulesToSaveWrapper
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from tokrl.config import ALL_LINEAR
from tokrl.lora_targets import check_lora_targets, resolve_lora_targets
from tokrl.tokenizer import EOS_TOKEN, PAD_TOKEN, VOCAB, VOCAB_SIZE, build_char_tokenizer

TINY_NAME = "tiny"
# Every linear layer of the decoder (tokrl.lora_targets); on Qwen2/Llama the paper's modules
# (tokrl.config.PAPER_LORA_TARGETS).
DEFAULT_LORA_TARGETS: tuple[str, ...] = (ALL_LINEAR,)

_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}
# Seconds to wait for a TCP connection to the hub before deciding it cannot be reached; without this probe
# huggingface_hub retries a failed DNS lookup for about 25 s before transformers gives up.
_HUB_PROBE_TIMEOUT_S = 3.0


class ModelLoadError(OSError):
    """A model or tokenizer could not be loaded; the message names the model and what to do instead."""


# --------------------------------------------------------------------------------------------------- dtype


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device | str) -> torch.dtype:
    """Map a dtype option to a torch.dtype.

    None or "auto": bf16 on CUDA (the paper's GPU setting), fp32 elsewhere (CPU bf16 matmuls are slow and
    imprecise). Strings: "bf16"/"bfloat16", "fp16"/"float16"/"half", "fp32"/"float32"/"float"; a
    floating-point torch.dtype passes through. Anything else raises ValueError listing the choices.
    """
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point type, got {dtype}")
        return dtype
    if dtype is None or (isinstance(dtype, str) and dtype.lower() == "auto"):
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    choices = ", ".join(["auto", *_DTYPES])
    raise ValueError(f"unknown dtype {dtype!r}; choose one of: {choices}, or pass a torch.dtype")


# ---------------------------------------------------------------------------------------------- tiny model


# The tiny model's vocabulary before the byte fallback: the characters, rounded up to a multiple of 8.
CHARACTER_VOCAB_SIZE = -(-len(VOCAB) // 8) * 8


def tiny_config(**overrides: object) -> Qwen2Config:
    """The tiny model's Qwen2Config; every default lives here and any field can be overridden.

    Defaults: the character vocabulary (259 tokens: specials, characters, byte fallback) rounded up to 264
    with unused ids, hidden 128, 2 layers, 4 query heads sharing 2 KV heads (GQA, as in Qwen2),
    intermediate 4 x hidden, tied input/output embeddings (as in Qwen2-1.5B, so the LM head weight is the
    embedding), 2048 positions.
    About 0.5 M parameters; HF `generate` with KV cache at batch 32 measured about 8,000 new tokens/s on
    an idle 2-core CPU (hidden 192: ~7,000; hidden 256: ~5,700; 4 layers roughly halve it).
    `intermediate_size` follows an overridden `hidden_size` unless it is overridden too. Unknown keys raise
    TypeError (Qwen2Config itself would silently keep a misspelt key).
    """
    known = set(Qwen2Config().to_dict())
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"tiny_config got unknown Qwen2Config fields: {unknown}")
    hidden = int(overrides.get("hidden_size", 128))
    defaults: dict[str, object] = {
        # A multiple of 8 keeps the embedding matmul on aligned shapes; ids >= VOCAB_SIZE are never produced.
        "vocab_size": -(-VOCAB_SIZE // 8) * 8,
        "hidden_size": hidden,
        "intermediate_size": 4 * hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
        "pad_token_id": VOCAB[PAD_TOKEN],
        # Like Qwen2, the end-of-text token doubles as BOS; the prompts never start with it.
        "bos_token_id": VOCAB[EOS_TOKEN],
        "eos_token_id": VOCAB[EOS_TOKEN],
        "use_cache": True,
    }
    config = Qwen2Config(**{**defaults, **overrides})
    if config.vocab_size < VOCAB_SIZE:
        raise ValueError(f"vocab_size must be >= {VOCAB_SIZE} (the character vocabulary), got {config.vocab_size}")
    return config


def build_tiny_model(seed: int = 0, **config_overrides: object) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Build the tiny Qwen2 model (fp32, CPU, eval mode) and its left-padding character tokenizer.

    The weights depend only on `seed`: initialisation runs under a forked RNG seeded with it, so the
    caller's global RNG state is left untouched. The model is first drawn with the character vocabulary alone
    (CHARACTER_VOCAB_SIZE rows, as before the byte fallback existed), then the byte tokens' embedding rows are
    appended, drawn after everything else: adding tokens never changes the other weights of a seed.
    """
    config = tiny_config(**config_overrides)
    base_rows = min(CHARACTER_VOCAB_SIZE, config.vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(Qwen2Config(**{**config.to_dict(), "vocab_size": base_rows}))
        extra = torch.empty(config.vocab_size - base_rows, config.hidden_size).normal_(0.0, config.initializer_range)
        model.resize_token_embeddings(config.vocab_size, mean_resizing=False)  # draws too: inside the fork
    with torch.no_grad():
        model.get_input_embeddings().weight[base_rows:] = extra  # [V - base, D] (the tied LM head too)
    model.config.vocab_size = config.vocab_size
    tokenizer = build_char_tokenizer(padding_side="left")
    _sync_generation_ids(model, tokenizer)
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------------------------- loading


def load_model(
    name_or_path: str, *, dtype: str | torch.dtype | None = None, device: torch.device | str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer: "tiny", a local directory, or a Hugging Face hub id.

    The tokenizer always comes back with a pad token (EOS when the model has none) and left padding,
    which generation needs. The model is in eval mode on `device` in `resolve_dtype(dtype, device)`.
    Raises FileNotFoundError for a local path that does not exist and ModelLoadError (an OSError) naming
    the model when the hub cannot be reached or has no such model.
    """
    torch_dtype = resolve_dtype(dtype, device)
    if name_or_path == TINY_NAME:
        model, tokenizer = build_tiny_model()
        model = model.to(device=device, dtype=torch_dtype)
    elif os.path.isdir(os.path.expanduser(name_or_path)):
        path = os.path.expanduser(name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device)
    elif _looks_like_local_path(name_or_path):
        raise FileNotFoundError(
            f"model path {name_or_path!r} does not exist (or is not a directory); pass a directory written by "
            f"save_pretrained, a hub id such as 'Qwen/Qwen2-1.5B', or {TINY_NAME!r}"
        )
    else:
        model, tokenizer = _load_from_hub(name_or_path, torch_dtype)
        model = model.to(device)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"the tokenizer of {name_or_path!r} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    _sync_generation_ids(model, tokenizer)
    return model.eval(), tokenizer


def _looks_like_local_path(name: str) -> bool:
    """True for names that can only be a filesystem path (a hub id is "name" or "org/name")."""
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or os.path.exists(name)


def _hub_offline_reason() -> str | None:
    """Why the hub cannot be used right now, or None when it may be reachable."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        # Behind a proxy a direct probe says nothing; let huggingface_hub try through the proxy.
        return None
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=_HUB_PROBE_TIMEOUT_S):
            return None
    except OSError as err:
        return f"cannot connect to {constants.ENDPOINT} ({err})"


def _load_from_hub(model_id: str, torch_dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """from_pretrained by hub id; offline, only the local cache is tried, so a missing model fails fast."""
    offline_reason = _hub_offline_reason()
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, local_files_only=offline_reason is not None)
        model = AutoModelForCausalLM.from_pretrained(
            model_id, dtype=torch_dtype, local_files_only=offline_reason is not None
        )
    except OSError as err:
        where = (
            f"the Hugging Face hub cannot be reached ({offline_reason}) and it is not in the local cache"
            if offline_reason
            else "the Hugging Face hub has no such model, or it needs authentication"
        )
        raise ModelLoadError(
            f"could not load model {model_id!r}: no local directory has that name and {where}. "
            f"Download it where the hub is reachable (e.g. `hf download {model_id} --local-dir DIR`) and pass "
            f"the local directory DIR instead, or use {TINY_NAME!r} for the built-in tiny model."
        ) from err
    return model, tokenizer


def _sync_generation_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give generate the tokenizer's pad/eos ids where the model's generation config lacks them."""
    generation_config = model.generation_config
    if generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id
    if generation_config.eos_token_id is None:
        generation_config.eos_token_id = tokenizer.eos_token_id


# -------------------------------------------------------------------------------------------------- LoRA


def _hf_model(model: PreTrainedModel | PeftModel) -> PreTrainedModel:
    """The transformers model inside a PeftModel (LoRA layers injected in place), or the model itself."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The original layer under a peft wrapper (LoRA layer, modules_to_save or trainable-tokens copy)."""
    if isinstance(module, BaseTunerLayer):
        return module.get_base_layer()
    if isinstance(module, AuxiliaryTrainingWrapper):
        return module.original_module
    return module


def _head_module_names(model: PreTrainedModel) -> list[str]:
    """Qualified names of the modules whose weight is the LM head: lm_head, plus embed_tokens when tied."""
    head_weight = lm_head_weight(model)
    names: list[str] = []
    for name, module in model.named_modules():  # parents come before their children
        if any(name.startswith(found + ".") for found in names):
            continue  # the base layer inside a peft wrapper: the wrapper's own name is the one peft matches
        if getattr(_unwrap(module), "weight", None) is head_weight:
            names.append(name)
    return names


def check_lm_head_not_adapted(model: PreTrainedModel | PeftModel, *, allow_head_copy: bool = False) -> None:
    """Raise ValueError if a peft adapter or trainable copy touches the LM head (or a tied embedding).

    The fused loss multiplies hidden states by the raw LM-head weight (`lm_head_weight`), so an adapter on
    the head itself would train but never enter the loss, and one on a tied input embedding would change
    the input side only. Both are refused rather than silently ignored.
    allow_head_copy: accept a trainable copy of the output-embedding module itself (peft
    `modules_to_save=["lm_head"]`), for callers that read the head weight through the module on every call
    (`get_output_embeddings().weight`, which peft resolves to the active copy, or to the original with the
    adapter disabled) and let the kernels compute its dW. tokrl's own trainer reads the raw weight once, so
    it never allows it. LoRA on the head, and anything on a tied input embedding, stay refused.
    """
    hf = _hf_model(model)
    head_weight = lm_head_weight(model)
    head_module = hf.get_output_embeddings()
    for name, module in hf.named_modules():
        if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            if getattr(_unwrap(module), "weight", None) is head_weight:
                if allow_head_copy and module is head_module and isinstance(module, ModulesToSaveWrapper):
                    continue
                wrapper = f"{type(module).__module__}.{type(module).__name__}"
                raise ValueError(_head_refusal(name, f"is wrapped by peft ({wrapper})"))
    if isinstance(model, PeftModel):
        head_name = next(name for name, module in hf.named_modules() if module is head_module)
        for config in model.peft_config.values():
            _check_peft_config(config, _head_module_names(hf), copy_allowed=head_name if allow_head_copy else None)


def _check_peft_config(config: object, head_names: Sequence[str], copy_allowed: str | None = None) -> None:
    """Raise ValueError if a peft config's target_modules / modules_to_save would select a head module
    (a modules_to_save copy of `copy_allowed` excepted)."""
    for name in head_names:
        if getattr(config, "target_modules", None) is not None and check_target_module_exists(config, name):
            raise ValueError(_head_refusal(name, "matches LoRA target_modules"))
        for saved in getattr(config, "modules_to_save", None) or ():
            # peft's rule: a module is copied when its qualified name ends with an entry.
            if (name == saved or name.endswith("." + saved)) and name != copy_allowed:
                raise ValueError(_head_refusal(name, f"is listed in modules_to_save ({saved!r})"))


def _head_refusal(name: str, what: str) -> str:
    return (
        f"refusing to adapt the LM head: module {name!r} {what}. The fused policy-gradient loss multiplies "
        "hidden states by the raw LM-head weight (tied to the input embedding in Qwen2-style models), so "
        "an adapter or trainable copy there would be silently ignored. Adapt only the decoder's layers "
        f"(tokrl's default target {ALL_LINEAR!r} does)."
    )


def apply_lora(
    model: PreTrainedModel | PeftModel,
    *,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: str | Sequence[str] = DEFAULT_LORA_TARGETS,
) -> PeftModel:
    """Wrap `model` with a LoRA adapter (paper defaults r=16, alpha=32, dropout 0.05; targets: all-linear).

    target_modules: "all-linear" (every linear layer of the decoder, never the LM head or an embedding: on
    Qwen2 the paper's q/k/v/o/gate/up/down_proj) or module names, each of which must exist in the model
    (`tokrl.lora_targets`). Only the adapter trains; peft freezes the base weights. An already peft-wrapped
    model is returned as is, after the LM-head check. Missing targets and targets that would select the LM
    head (or a tied embedding) are refused before the model is touched (peft wraps in place).
    """
    if isinstance(model, PeftModel):
        check_lm_head_not_adapted(model)
        return model
    check_lora_targets(model, target_modules)
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=resolve_lora_targets(model, target_modules),
        bias="none", task_type="CAUSAL_LM",
    )  # fmt: skip
    check_lm_head_not_adapted(model)
    _check_peft_config(config, _head_module_names(model))
    with warnings.catch_warnings():  # peft's notes the user can do nothing about
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out is set to False.*Conv1D.*")  # GPT-2: peft flips it
        peft_model = get_peft_model(model, config)
    check_lm_head_not_adapted(peft_model)
    return peft_model


# ------------------------------------------------------------------------------------ what the trainer reads


def lm_head_weight(model: PreTrainedModel | PeftModel) -> torch.Tensor:
    """The raw output-embedding weight [V, D] (the tied input embedding for Qwen2-style models)."""
    head = _hf_model(model).get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(_hf_model(model)).__name__} has no output embedding (is it a causal LM?)")
    return _unwrap(head).weight  # [V, D]


def hidden_states(
    model: PreTrainedModel | PeftModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Final-norm hidden states [B, L, D] that feed the LM head, without computing logits.

    input_ids [B, L] int64, attention_mask [B, L] (1 real, 0 pad; left padding expected). Runs the
    decoder body (LoRA layers included) with position ids counted over real tokens only, so a left-padded
    row gives the same hidden states as the unpadded sequence, and `hidden_states(...) @ W.T` equals the
    model's logits under the same positions, before its logit scale / soft-cap (`tokrl.head_transform`).
    Every family of tests/model_families.py (Llama, Mistral, Qwen2/3, Gemma 1-3, Phi-3, OLMo-2, Qwen2-MoE,
    Mixtral, Cohere, Granite, GPT-2) needs nothing more than these three inputs. Rows at padded positions are
    meaningless.
    """
    body = _hf_model(model).base_model  # the decoder stack (Qwen2Model), final norm included, no LM head
    # Left padding: the first real token is position 0, as in generate; pads get 0 (masked out anyway).
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)  # [B, L]
    out = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    return out.last_hidden_state  # [B, L, D]


def router_aux_loss_note(model: PreTrainedModel | PeftModel) -> str | None:
    """The line a run logs once for a Mixture-of-Experts model whose config weights a router load-balancing loss
    (`router_aux_loss_coef` != 0, where TRL would add it): tokrl's loss is the policy gradient alone. None otherwise.
    """
    config = _hf_model(model).config.get_text_config()
    coef = getattr(config, "router_aux_loss_coef", 0.0) or 0.0
    if not hasattr(config, "output_router_logits") or coef == 0.0:
        return None
    return (
        f"{type(_hf_model(model)).__name__}: the router load-balancing loss (router_aux_loss_coef={coef:g}) is left "
        "out; tokrl's loss is the policy-gradient loss on the selected tokens alone"
    )


def trainable_parameter_count(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tied weight is counted once."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
