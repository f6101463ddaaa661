"""The `hf` sampler: Hugging Face `generate` on left-padded rows (the reference the tokrl engine matches).

The settings are passed as a fresh `transformers.GenerationConfig`, so a checkpoint's own generation
defaults (top_k, repetition penalty) never leak in: top_k=0 and the temperature/top_p given here define
the distribution the loss assumes. Each prompt is repeated G times and prefilled G times. No log-probs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import GenerationConfig as HFGenerationConfig

from tokrl.sampler.registry import register_sampler
from tokrl.sampler.rows import cut_at_eos, left_pad
from tokrl.sampler.token_sampling import SamplingOptions


def hf_generation_config(
    max_new_tokens: int, options: SamplingOptions, eos_ids: Sequence[int], pad_id: int
) -> HFGenerationConfig:
    sampling = {"temperature": options.temperature, "top_p": options.top_p, "top_k": 0} if options.do_sample else {}
    return HFGenerationConfig(
        max_new_tokens=max_new_tokens,
        eos_token_id=list(eos_ids),
        pad_token_id=pad_id,
        use_cache=True,
        do_sample=options.do_sample,
        **sampling,
    )


@register_sampler("hf")
class HFSampler:
    """`model.generate` on the repeated rows."""

    graphed_share = None

    def unsupported_reason(self, model: torch.nn.Module) -> str | None:
        return None if callable(getattr(model, "generate", None)) else f"{type(model).__name__} has no generate"

    @torch.no_grad()
    def generate(
        self,
        model: torch.nn.Module,
        prompts: Sequence[Sequence[int]],
        *,
        num_generations: int,
        max_new_tokens: int,
        options: SamplingOptions,
        eos_ids: Sequence[int],
        pad_id: int,
    ) -> tuple[list[list[int]], None]:
        config = hf_generation_config(max_new_tokens, options, eos_ids, pad_id)
        rows = [list(p) for p in prompts for _ in range(num_generations)]
        ids, mask = left_pad(rows, pad_id, next(model.parameters()).device)  # [B, L], [B, L]
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)  # [B, L + n]
        return [cut_at_eos(row, eos_ids) for row in out[:, ids.shape[1] :].tolist()], None
