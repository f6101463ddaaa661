"""From the algorithm's selections to the loss's forward batch: `LossRows`, `gather_rows`, `pack_loss_batch`.

After the algorithm has selected tokens, `gather_rows` concatenates the groups' selections into batch rows
(weights divided by the batch's total norm_units) and `pack_loss_batch` builds the one teacher-forced
forward batch the loss needs: only rows that own a selected token, each cut after its last selected
position, left-padded, plus the flat hidden-state index of every selected token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tokrl.algorithms import GroupSelection


@dataclass
class PackedBatch:
    """Prompt + continuation rows, left-padded as one sequence each, for a teacher-forced forward.

    input_ids, attention_mask [B, L]; start [B] int64: the flat row (b * L + column) of the hidden state
    that predicts continuation token 0 of row b, so token t of row b is predicted at flat row start[b] + t.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    start: torch.Tensor


def pack_sequences(
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    pad_id: int,
    device: torch.device | str = "cpu",
) -> PackedBatch:
    """Rows prompt_b + continuation_b, left-padded (ends aligned, so L is the longest row and no longer).

    The continuation holds the tokens that must be *inputs*: to score completion tokens 0..t the forward
    needs completion[:t] (the hidden state at the last prompt token predicts token 0).
    """
    rows = [list(p) + list(c) for p, c in zip(prompts, continuations, strict=True)]
    width = max((len(row) for row in rows), default=0)
    # The same tensors as `left_pad`, which writes them row by row; built as padded Python lists and converted
    # in one call each, since a per-row tensor write costs more than a row's few tokens.
    ids = torch.tensor([[pad_id] * (width - len(row)) + row for row in rows], dtype=torch.int64)  # [B, L]
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], dtype=torch.int64)  # [B, L]
    start = [b * width + (width - len(row)) + len(p) - 1 for b, (row, p) in enumerate(zip(rows, prompts, strict=True))]
    ids, mask = ids.reshape(len(rows), width).to(device), mask.reshape(len(rows), width).to(device)  # [B, L] ([0, 0])
    return PackedBatch(ids, mask, torch.tensor(start, dtype=torch.int64, device=ids.device))  # start: [B]


@dataclass
class LossRows:
    """The batch's selected tokens, aligned [k] tensors; `row` indexes the P*G rollout rows."""

    row: torch.Tensor
    position: torch.Tensor
    token: torch.Tensor
    advantage: torch.Tensor
    weight: torch.Tensor

    def __len__(self) -> int:
        return int(self.row.numel())

    def select(self, keep: torch.Tensor) -> LossRows:
        """The rows at positions `keep` ([k'] int64), in that order."""
        return LossRows(self.row[keep], self.position[keep], self.token[keep], self.advantage[keep], self.weight[keep])


def gather_rows(selections: list[GroupSelection], group_size: int, units: float | None = None) -> LossRows:
    """Concatenate the groups' selections; weights divided by max(units, 1), where units is the batch's
    total norm_units (default: these selections' own; a multi-process run passes the global total)."""
    units = max(sum(s.norm_units for s in selections) if units is None else units, 1.0)
    offsets = torch.tensor([g * group_size for g, s in enumerate(selections) for _ in range(len(s))], dtype=torch.int64)
    return LossRows(
        row=torch.cat([s.completion for s in selections]) + offsets,  # [k] rollout row of each token
        position=torch.cat([s.position for s in selections]),  # [k]
        token=torch.cat([s.token for s in selections]),  # [k]
        advantage=torch.cat([s.advantage for s in selections]).float(),  # [k] fp32
        weight=torch.cat([s.weight for s in selections]).float() / units,  # [k] fp32
    )


def pack_loss_batch(
    prompts: list[list[int]], completions: list[list[int]], rows: LossRows, pad_id: int, device: torch.device
) -> tuple[PackedBatch, torch.Tensor]:
    """The forward batch (only rollout rows with a selected token, each cut after its last selected
    position) and the flat hidden-state index of every selected token: [k] int64."""
    active, packed_row = torch.unique(rows.row, return_inverse=True)  # [B'], [k]
    last = torch.zeros(len(active), dtype=torch.int64).scatter_reduce(0, packed_row, rows.position, "amax")  # [B']
    keep = active.tolist()
    inputs = [completions[b][: int(n)] for b, n in zip(keep, last.tolist(), strict=True)]
    batch = pack_sequences([prompts[b] for b in keep], inputs, pad_id, device)
    index = batch.start[packed_row.to(device)] + rows.position.to(device)  # [k]
    return batch, index
