"""Token-id rows in and out of a sampler: left padding, EOS ids, cutting a completion after its first EOS.

Prompts are left-padded so every row's last prompt token sits at the same column and new tokens append on
the right; the attention mask marks the pads. A completion is cut after its first EOS (the EOS stays: it is
a token the policy chose and the loss may select it); a row without EOS ran to `max_new_tokens`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase


def eos_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; completions could never end")
    return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The pad id samplers feed after a row's EOS (the first EOS id when the tokenizer has no pad)."""
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else eos_token_ids(tokenizer)[0]


def left_pad(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token-id rows to one length: (input_ids [B, L] int64, attention_mask [B, L] int64)."""
    width = max((len(r) for r in rows), default=0)
    # Padded on the host and converted once: a per-row tensor write costs two ops per row.
    ids = torch.tensor([[pad_id] * (width - len(r)) + [int(t) for t in r] for r in rows], dtype=torch.int64)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.int64)
    return ids.view(len(rows), width).to(device), mask.view(len(rows), width).to(device)  # [B, L], [B, L]


def cut_at_eos(tokens: Sequence[int], eos_ids: Sequence[int]) -> list[int]:
    """tokens up to and including the first EOS (all of them when there is none)."""
    out: list[int] = []
    for t in tokens:
        out.append(int(t))
        if t in eos_ids:
            break
    return out
