"""Stage 2 of a step, `select(batch) -> Selection`, and the loss's forward batch: `LossRows`, `pack_loss_batch`.

`select` runs the algorithm on each of this rank's groups (its token selection draws from the prompt's stream),
shares the groups with every rank (each rank's algorithm observes every group: identical state everywhere) and
sums the global norm_units and selected-token count. Then `gather_rows` concatenates the groups' selections
into batch rows (weights divided by the batch's total norm_units) and `pack_loss_batch` builds the one teacher-forced
forward batch the loss needs: only rows that own a selected token, each cut after its last selected
position, left-padded, plus the flat hidden-state index of every selected token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from tokrl.algorithms import Algorithm, Group, GroupSelection
from tokrl.infra import distributed
from tokrl.sampler.rows import left_pad

if TYPE_CHECKING:
    from tokrl.stages.collect import RolloutBatch


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
    ids, mask = left_pad(rows, pad_id, device)  # [B, L], [B, L]
    width = ids.shape[1]
    start = [b * width + (width - len(row)) + len(p) - 1 for b, (row, p) in enumerate(zip(rows, prompts, strict=True))]
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


@dataclass
class RolloutShard:
    """One rank's part of a step, as every rank receives it: its groups, their replay prefix lengths, which
    groups had no learning signal, and its sampling's seconds, generated tokens, peak memory and graphed share."""

    groups: list[Group]
    prefix_lens: list[int]
    zero_std: list[bool]
    seconds: float
    tokens: int
    gen_peak_mem_mib: float
    graphed: float | None


@dataclass
class Selection:
    """What `select` returns: this rank's loss rows, the global number of selected tokens, every rank's shard
    (rank order = global prompt order)."""

    rows: LossRows
    selected: int
    shards: list[RolloutShard]

    @property
    def groups(self) -> list[Group]:
        """Every rank's groups, in global prompt order."""
        return [group for shard in self.shards for group in shard.groups]


def select(batch: RolloutBatch, algorithm: Algorithm, group_size: int) -> Selection:
    """The algorithm's token selection on this rank's groups, gathered into loss rows weighted by the global
    norm_units; every rank's algorithm observes every group (a collective: every rank calls it)."""
    selections = [algorithm.process_group(g, s) for g, s in zip(batch.groups, batch.streams, strict=True)]
    out = batch.rollout
    local = RolloutShard(
        batch.groups,
        [len(p) for p in batch.prefixes],
        [s.zero_std for s in selections],
        out.seconds,
        out.generated_tokens,
        batch.peak_mem_mib,
        out.sampler_graphed,
    )
    shards = distributed.all_gather_object(local)  # rank order = global prompt order
    for shard in shards:  # every rank observes every group: identical algorithm state everywhere
        for group in shard.groups:
            algorithm.observe(group)
    counts = torch.tensor([sum(s.norm_units for s in selections), sum(len(s) for s in selections)]).double()
    units, selected = distributed.all_reduce_sum(counts).tolist()  # global norm_units and selected tokens
    return Selection(gather_rows(selections, group_size, units=units), int(selected), shards)


def last_positions(rows: LossRows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(active [B'], packed_row [k], last [B']): the rollout rows that own a selected token (sorted), each
    selected token's index into them, and each active row's last selected position."""
    active, packed_row = torch.unique(rows.row, return_inverse=True)  # [B'], [k]
    last = torch.zeros(len(active), dtype=torch.int64).scatter_reduce(0, packed_row, rows.position, "amax")  # [B']
    return active, packed_row, last


def pack_loss_batch(
    prompts: list[list[int]], completions: list[list[int]], rows: LossRows, pad_id: int, device: torch.device
) -> tuple[PackedBatch, torch.Tensor]:
    """The forward batch (only rollout rows with a selected token, each cut after its last selected
    position) and the flat hidden-state index of every selected token: [k] int64."""
    active, packed_row, last = last_positions(rows)  # [B'], [k], [B']
    keep = active.tolist()
    inputs = [completions[b][: int(n)] for b, n in zip(keep, last.tolist(), strict=True)]
    batch = pack_sequences([prompts[b] for b in keep], inputs, pad_id, device)
    index = batch.start[packed_row.to(device)] + rows.position.to(device)  # [k]
    return batch, index
