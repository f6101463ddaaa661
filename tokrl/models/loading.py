"""Loading a causal LM and its tokenizer by name: "tiny", a local directory, or a Hugging Face hub id.

A name that cannot be a hub id (`tokrl.infra.hub.looks_like_path`) and is not a directory is a missing local
path, never sent to the hub; a hub id is tried offline (local cache only) when the hub cannot be reached, so a
missing model fails fast with a message naming it and the offline way out.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from tokrl.infra.hub import looks_like_path
from tokrl.models.names import TINY_NAME
from tokrl.models.tiny import build_tiny_model, sync_generation_ids

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
    elif looks_like_path(name_or_path) or os.path.exists(name_or_path):
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
    sync_generation_ids(model, tokenizer)
    return model.eval(), tokenizer


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
