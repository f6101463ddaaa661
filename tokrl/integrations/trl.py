"""tokrl's kernels inside TRL's `GRPOTrainer`, in one line (`pip install tokrl[trl]`).

    from tokrl.integrations.trl import TokrlGRPOTrainer      # a GRPOTrainer that does the line below itself
    trainer = GRPOTrainer(model=..., reward_funcs=..., args=GRPOConfig(...), train_dataset=...)
    use_tokrl_kernels(trainer)                                # or mode="pg_loss"
    trainer.train()

mode="logprob": every `model(..., fused_lm_head=True)` call TRL makes (policy, reference model, old log-probs)
computes its per-token log-probs with `tokrl_kernels.linear_logprob` from the last hidden states and the LM head
weight (`trl_head`); TRL's loss runs unchanged on them. Entropy (TRL always logs it, and its top-entropy mask
and entropy bonus use it) comes from `linear_logprob(..., return_entropy=True)` when the installed
tokrl_kernels has it, else from a no-gradient chunked pass (then an entropy bonus is refused).
mode="pg_loss": additionally, TRL's loss is one `linear_pg_loss` call for the configurations it expresses
exactly (`trl_loss`: grpo/bnpo/dr_grpo/dapo, with or without KL, TRL's bias-corrected KL on- and off-policy, an MoE
router aux loss); the rest fall back to TRL's loss with one warning. What ran is counted: `tokrl_kernels_path`
holds the kernel calls and fallbacks (in total and per optimizer step), and TRL's logs get `tokrl/loss_fallbacks`
and `tokrl/loss_kernel_calls` (`loss_calls`).
Served exactly: any causal LM whose logits are map(h @ W.T), map being the model's logit scale and soft-cap
(Gemma-2, Cohere, Granite included), tied or untied heads, a trainable copy of the head
(`modules_to_save=["lm_head"]`), MoE models. Models tokrl cannot serve exactly are refused with the reason
(`UnsupportedByTokrl`, a ValueError): a head bias, LoRA on the head, an adapted tied embedding.

Why tokrl's token selection (S-GRPO, T-SPMO) is not offered as a TRL option: applying it to TRL's completion
mask cannot be done through TRL's public surface, only by forking its private data flow. (1) The completion mask
is also the attention mask of the loss forward, so dropping unselected tokens from it hides them from the model;
the only loss-only mask `_compute_loss` reads is `inputs["tool_mask"]`, which means "tool output" and is built
by TRL's tool loop. (2) TRL's loss types renormalise over that mask (per sequence, per micro-batch, by
max_completion_length); tokrl divides each selected row's weight by the batch's `norm_units` (selected tokens,
T-SPMO pairs), so the weights would have to be smuggled into per-token advantages (B, T), rescaled by TRL's
normaliser and its gradient-accumulation split. (3) tokrl's algorithms need the raw rewards of each group and the
completion ids, which TRL consumes inside the private `_generate_and_score_completions`, and T-SPMO's replay
restarts generation from a stored prefix, which TRL's generation (dataset prompt only) cannot do. A subclass
overriding that private method, hijacking `tool_mask` and re-deriving advantages is a fork of TRL's loss path
that would break silently on TRL updates. To train S-GRPO or T-SPMO, use tokrl's own trainer
(`tokrl train --algorithm s-grpo ...`): it reads TRL-style datasets (plain or conversational `prompt` columns)
and TRL-style reward functions.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from trl import GRPOTrainer

from tokrl.integrations import loss_calls
from tokrl.integrations.trl_head import UnsupportedByTokrl, check_head_servable, patch_fused_head
from tokrl.integrations.trl_loss import config_fallback_reason, install_pg_loss
from tokrl.models.forward import transformers_model
from tokrl.models.head import logit_transform
from tokrl_kernels import resolve_impl

__all__ = ["MODES", "TokrlGRPOTrainer", "UnsupportedByTokrl", "use_tokrl_kernels"]

logger = logging.getLogger(__name__)
MODES = ("logprob", "pg_loss")


def _hf_model(trainer: GRPOTrainer, model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model whose forward TRL patched: unwrapped from accelerate, then from PEFT."""
    return transformers_model(trainer.accelerator.unwrap_model(model))


def use_tokrl_kernels(trainer: GRPOTrainer, mode: str = "logprob", impl: str = "auto") -> GRPOTrainer:
    """Serve `trainer`'s fused LM head (and with mode="pg_loss" its loss) with tokrl's kernels; returns trainer.

    mode: "logprob" or "pg_loss" (see the module docstring). impl: "auto" | "triton" | "torch", as in
    tokrl_kernels (auto: Triton on CUDA, the PyTorch twin elsewhere). Raises UnsupportedByTokrl naming the reason
    for a model it cannot serve exactly, TypeError for a trainer that is not a GRPOTrainer.
    """
    if not isinstance(trainer, GRPOTrainer):
        raise TypeError(f"use_tokrl_kernels: trainer must be a trl.GRPOTrainer, got {type(trainer).__name__}")
    if mode not in MODES:
        raise ValueError(f"use_tokrl_kernels: mode must be one of {MODES}, got {mode!r}")
    if getattr(trainer, "tokrl_kernels_path", None) is not None:
        raise RuntimeError("use_tokrl_kernels: this trainer already uses tokrl's kernels")
    policy = _hf_model(trainer, trainer.model)
    device = policy.get_output_embeddings().weight.device
    resolved = resolve_impl(impl, device)  # validates impl before anything is patched
    check_head_servable(policy, adapted=trainer.accelerator.unwrap_model(trainer.model))
    reference = None if trainer.ref_model is None else _hf_model(trainer, trainer.ref_model)
    if reference is not None:
        check_head_servable(reference)
    patch_fused_head(policy, temperature=trainer.temperature, impl=impl, with_entropy=True)
    if reference is not None:
        patch_fused_head(reference, temperature=trainer.temperature, impl=impl, with_entropy=False)
    loss_path = loss_calls.FALLBACK_PATH
    if mode == "pg_loss":
        install_pg_loss(trainer)
        reason = config_fallback_reason(trainer)
        loss_path = loss_calls.fallback_path([reason]) if reason else loss_calls.KERNEL_PATH
    trainer.tokrl_kernels_path = {
        "log_probs": f"tokrl_kernels.linear_logprob (impl={resolved})",
        "logits": f"h @ W.T, logit transform: {logit_transform(policy).describe()}",
        "models": "policy + reference" if reference is not None else "policy",
        "entropy": "in-kernel (linear_logprob return_entropy=True)",
        "loss": loss_path,
    }
    if mode == "pg_loss":  # from here on "loss" says what ran, with counts (loss_calls)
        loss_calls.start(trainer, planned=loss_path)
    logger.info("tokrl kernels in TRL: %s", "; ".join(f"{k}: {v}" for k, v in trainer.tokrl_kernels_path.items()))
    return trainer


class TokrlGRPOTrainer(GRPOTrainer):
    """`trl.GRPOTrainer` with `use_tokrl_kernels` applied in the constructor.

    Takes GRPOTrainer's arguments plus `tokrl_mode` ("logprob" | "pg_loss") and `tokrl_impl`
    ("auto" | "triton" | "torch").
    """

    def __init__(self, *args: Any, tokrl_mode: str = "logprob", tokrl_impl: str = "auto", **kwargs: Any) -> None:
        if tokrl_mode not in MODES:  # before the (slow) model loading
            raise ValueError(f"TokrlGRPOTrainer: tokrl_mode must be one of {MODES}, got {tokrl_mode!r}")
        super().__init__(*args, **kwargs)
        use_tokrl_kernels(self, mode=tokrl_mode, impl=tokrl_impl)
