"""The optimisation half of an RL step: fused loss on the selected rows, backward, gradient sum over ranks,
clipping, AdamW and learning-rate schedule.

For the selected rows (completion b, position t, token v, advantage A, weight w) of one step:
    hidden = policy(prompt + completion[:last selected position])      [B', L, D], stopped early per row
    loss   = sum_k w_k * (pg_k + beta * kl_k)                           linear_pg_loss, reduction="sum"
with the log-probs taken at `temperature` (the sampling temperature, so pi_theta is the distribution the
tokens were drawn from) straight from hidden rows and the LM head weight, through the model's logit scale and
soft-cap (`tokrl.models.head`): [k, V] logits are never built. A Mixture-of-Experts model's router
load-balancing loss is not added (the run logs so once).
num_iterations > 1 repeats loss/backward/step on the same rows with the first iteration's log-probs as
pi_old (PPO ratio and clipping). beta > 0 reads the reference log-probs from the same model with the LoRA
adapter disabled.

Micro-batches (`loss_micro_batch` = m > 0): the B' forward rows are taken longest first, m at a time; each
micro-batch runs its own forward, loss on its selected rows and backward, and the gradients add up. The
weights are divided by the whole batch's norm_units before the split, so the summed loss and gradients are
those of one forward over all rows (up to float rounding and LoRA dropout masks): only the activations of
m rows are alive at once, which bounds the update's memory by m x the longest row whatever the batch is.

`share_prompts` swaps the packed forward for tokrl/stages/prompt_sharing.py's: each distinct prompt of a micro-batch
runs once, and either each distinct completion prefix runs once after it (one pass over its prefix tree,
tokrl/stages/prefix_tree.py) or the rows continue from its keys/values, whichever is estimated cheaper (same
values up to float summation order; LoRA dropout masks on shared tokens are then drawn once, not per row).
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokrl.config.schema import TrainConfig
from tokrl.config.sections import LossConfig, OptimConfig
from tokrl.infra import distributed
from tokrl.infra.lr_schedule import lr_scheduler
from tokrl.infra.memory import peak_memory_mib, reset_peak_memory
from tokrl.models.forward import hidden_states, lm_head_weight, router_aux_loss_note, set_training
from tokrl.models.head import logit_transform
from tokrl.stages.prefix_tree import PrefixTreeBatch
from tokrl.stages.prompt_sharing import SharedPromptBatch, pack_shared_prompts, shared_prompt_hidden, unsupported_reason
from tokrl.stages.select import LossRows, PackedBatch, last_positions, pack_loss_batch
from tokrl_kernels import linear_logprob, linear_pg_loss

logger = logging.getLogger("tokrl")


def _packed_hidden(model: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
    """The packed forward's final hidden states, flattened: [B' * L, D]."""
    hidden = hidden_states(model, batch.input_ids, batch.attention_mask)  # [B', L, D]
    return hidden.reshape(-1, hidden.shape[-1])


@dataclass(frozen=True)
class _LossForward:
    """How the loss rows become hidden states: pack(prompts, completions, rows, pad_id, device) -> (batch,
    flat index [k]); hidden(model, batch) -> flat hidden states [N, D]; tokens(batch) -> 0-d real tokens."""

    pack: Callable[..., tuple[Any, torch.Tensor]]
    hidden: Callable[[torch.nn.Module, Any], torch.Tensor]
    tokens: Callable[[Any], torch.Tensor]


PACKED = _LossForward(pack_loss_batch, _packed_hidden, lambda batch: batch.attention_mask.sum())


def shared_prompts_forward(hidden_size: int) -> _LossForward:
    """The shared-prompt forward for a model of hidden size D (which its layout choice weighs)."""
    pack = functools.partial(pack_shared_prompts, hidden_size=hidden_size)
    return _LossForward(pack, shared_prompt_hidden, lambda batch: batch.tokens)


@dataclass
class _Part:
    """One micro-batch: where its rows sit in the step's LossRows (keep [k_j]), its forward batch, flat
    hidden-row index [k_j], targets [k_j], its rows, reference log-probs [k_j] (beta > 0) and, after the first
    iteration, its pi_old log-probs [k_j]."""

    keep: torch.Tensor
    batch: PackedBatch | SharedPromptBatch | PrefixTreeBatch
    index: torch.Tensor
    targets: torch.Tensor
    rows: LossRows
    ref_logp: torch.Tensor | None
    old_logp: torch.Tensor | None = None


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm of a step was NaN/inf; the step was not applied. The trainer saves the state
    and raises it again with the checkpoint named (`saved_to`)."""

    def __init__(self, what: str, value: float, step: int, saved: Path | None = None) -> None:
        self.what, self.value, self.step, self.saved = what, value, step, saved
        where = f" State saved to {saved}." if saved is not None else ""
        super().__init__(
            f"non-finite {what} ({value}) at step {step + 1}; stopped without applying it.{where} Try a lower --lr, "
            "a smaller --max-grad-norm, or --dtype float32; resume with --resume."
        )

    def saved_to(self, path: Path) -> NonFiniteLossError:
        """The same error, naming the checkpoint the state was saved to."""
        return NonFiniteLossError(self.what, self.value, self.step, path)


@dataclass
class _StepStart:
    """The trainable weights, optimiser state and schedule as a step found them (copies)."""

    weights: list[torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]

    @classmethod
    def take(cls, update: PolicyUpdate) -> _StepStart:
        weights = [p.detach().clone() for p in update.params]
        return cls(weights, copy.deepcopy(update.optimizer.state_dict()), copy.deepcopy(update.scheduler.state_dict()))

    def restore(self, update: PolicyUpdate) -> None:
        with torch.no_grad():
            for param, weight in zip(update.params, self.weights, strict=True):
                param.copy_(weight)
        update.optimizer.load_state_dict(self.optimizer)
        update.scheduler.load_state_dict(self.scheduler)


TOTALS = ("loss", "clipped", "kl_sum", "forward_tokens")  # a micro-batch's sums, in the order of its [4] tensor


@dataclass
class LossTotals:
    """One iteration's sums over this rank's rows: the loss, the PPO-clipped rows, the k3 KL (0 when beta = 0)
    and the tokens the loss forward ran over."""

    loss: float
    clipped: float
    kl_sum: float
    forward_tokens: float


@dataclass
class UpdateResult:
    """What one `PolicyUpdate.apply` did: the loss statistics of its last iteration (over every rank), the
    learning rate after it, its peak memory and wall time, and the first iteration's log-probs of the rows.

    loss: the optimised loss; grad_norm: before clipping; clip_frac: PPO-clipped share of the rows; kl: mean k3 KL
    to the adapter-free model (beta > 0, else 0.0); forward_tokens: tokens the loss forward ran over;
    logp [k] fp32 CPU: pi_old of the rows, aligned with them (zeros for an update with nothing selected)."""

    loss: float
    grad_norm: float
    clip_frac: float
    kl: float
    forward_tokens: int
    peak_mem_mib: float
    lr: float
    seconds: float
    logp: torch.Tensor

    def stats(self) -> dict[str, Any]:
        """The metrics record's update keys, in its order."""
        return {
            "loss": self.loss,
            "grad_norm": self.grad_norm,
            "clip_frac": self.clip_frac,
            "kl": self.kl,
            "forward_tokens": self.forward_tokens,
            "update_peak_mem_mib": self.peak_mem_mib,
        }


class PolicyUpdate:
    """Owns the trainable parameters' optimiser and schedule and applies one step's loss to them.

    Reads its own config sections: `loss` (clipping, KL, iterations, kernel, micro-batches, shared prompts) and
    `optim` (AdamW and the schedule, planned over `steps` * num_iterations optimiser steps). `temperature` is
    the sampling temperature, so the loss's pi_theta is the distribution the tokens were drawn from.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss: LossConfig,
        optim: OptimConfig,
        *,
        steps: int,
        temperature: float,
        pad_id: int,
        device: torch.device,
    ) -> None:
        self.model, self.loss, self.optim, self.pad_id, self.device = model, loss, optim, pad_id, device
        self.temperature = temperature
        self.params = [p for p in model.parameters() if p.requires_grad]
        # torch picks the multi-tensor AdamW on CUDA only; on CPU it takes the same values (bit for bit) in a
        # fraction of the per-parameter loop's time, which at LoRA sizes is mostly Python and op dispatch.
        foreach = True if device.type == "cpu" else None
        self.optimizer = torch.optim.AdamW(self.params, lr=optim.lr, weight_decay=optim.weight_decay, foreach=foreach)
        total_updates = max(steps * loss.num_iterations, 1)
        self.scheduler = lr_scheduler(self.optimizer, optim.lr_scheduler, optim.warmup_steps, total_updates)
        self.head = lm_head_weight(model)  # [V, D]
        self.head_kwargs = logit_transform(model).kernel_kwargs()  # logit scale / soft-cap, {} for a plain head
        note = router_aux_loss_note(model)
        if note is not None:
            logger.warning(note)
        self.forward = PACKED
        if loss.share_prompts:
            # An optimisation, not a change of loss: where the model cannot share prompts (the default preset's
            # choice meeting a user's Gemma-2, say), the run goes on with the plain forward and says why.
            reason = unsupported_reason(model)
            if reason is None:
                self.forward = shared_prompts_forward(self.head.shape[1])
            else:
                logger.warning("share_prompts: %s; the loss runs the plain forward (same loss, more tokens)", reason)

    @classmethod
    def for_run(cls, model: torch.nn.Module, config: TrainConfig, pad_id: int, device: torch.device) -> PolicyUpdate:
        """The update of a run: its loss and optimiser sections, its steps and sampling temperature."""
        return cls(
            model,
            config.section(LossConfig),
            config.section(OptimConfig),
            steps=config.steps,
            temperature=config.generation.temperature,
            pad_id=pad_id,
            device=device,
        )

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def skip(self) -> None:
        """A batch with nothing selected: no gradients, but the optimiser and schedule still move on."""
        self.optimizer.zero_grad(set_to_none=True)
        for _ in range(self.loss.num_iterations):  # AdamW skips parameters without gradients
            self.optimizer.step()
            self.scheduler.step()

    def apply(
        self, prompts: list[list[int]], completions: list[list[int]], rows: LossRows, step: int, selected: int
    ) -> UpdateResult:
        """Loss on this rank's selected `rows`, backward, sum gradients over ranks, clip, optimiser step
        (num_iterations times). `selected`: the global number of rows (another rank may hold all of them, then
        this rank only joins the gradient sum). Raises NonFiniteLossError, before any optimiser step of the
        iteration, for a NaN/inf loss or gradient norm, with the step's earlier iterations undone."""
        start = time.perf_counter()
        reset_peak_memory(self.device)
        logp = torch.zeros(len(rows))  # [k] aligned with `rows`
        if selected == 0:
            self.skip()
            return UpdateResult(0.0, 0.0, 0.0, 0.0, 0, self._peak_mib(), self.lr, time.perf_counter() - start, logp)
        micro = self._micro_batches(prompts, completions, rows)
        # With several iterations a later one can turn non-finite after earlier ones moved the weights: keep the
        # state the step found, so the checkpoint saved on that error is the last good step's, not half of this one.
        found = _StepStart.take(self) if self.loss.num_iterations > 1 else None
        for it in range(self.loss.num_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            totals = self._backward(micro, first_iteration=it == 0)  # [4] TOTALS of this rank
            summed = distributed.sum_gradients(self.params, totals)  # LoRA gradients and totals over ranks
            max_norm = self.optim.max_grad_norm if self.optim.max_grad_norm > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
            # One read of the device per iteration (a sync on a GPU) for the checks and the statistics. A
            # non-finite loss is still caught before the optimiser step: clipping only rescaled the gradients.
            *sums, norm = torch.cat([summed.float(), grad_norm.reshape(1).float()]).tolist()
            sum_of = LossTotals(*sums)  # over every rank
            for what, value in (("loss", sum_of.loss), ("gradient norm", norm)):
                if not math.isfinite(value):
                    if found is not None and it > 0:
                        found.restore(self)
                    raise NonFiniteLossError(what, value, step)
            self.optimizer.step()
            self.scheduler.step()
        set_training(self.model, False)
        for part in micro:
            logp[part.keep] = part.old_logp.cpu()
        return UpdateResult(
            loss=sum_of.loss,
            grad_norm=norm,
            clip_frac=sum_of.clipped / selected,
            kl=sum_of.kl_sum / selected if self.loss.beta > 0 else 0.0,
            forward_tokens=int(sum_of.forward_tokens),
            peak_mem_mib=self._peak_mib(),
            lr=self.lr,
            seconds=time.perf_counter() - start,
            logp=logp,
        )

    def loss_backward(self, prompts: list[list[int]], completions: list[list[int]], rows: LossRows) -> LossTotals:
        """The first iteration's forward, loss and backward on this rank's `rows` (gradients accumulate into
        the LoRA weights' .grad; no gradient sum, clipping or optimiser step): the part of `apply` that the
        train-step benchmark times."""
        totals = self._backward(self._micro_batches(prompts, completions, rows), first_iteration=True)
        return LossTotals(*totals.tolist())

    def _backward(self, micro: list[_Part], first_iteration: bool) -> torch.Tensor:
        """Every micro-batch's forward, loss and backward; their TOTALS summed: [4] on the device."""
        totals = torch.zeros(len(TOTALS), device=self.device)  # [4]
        for part in micro:
            totals += self._loss_backward(part, first_iteration)
        return totals

    def _micro_batches(self, prompts: list[list[int]], completions: list[list[int]], rows: LossRows) -> list[_Part]:
        """This rank's rows split into micro-batches of at most `loss_micro_batch` forward rows, longest first
        (one part holding every row when it is 0); the reference log-probs are read here when beta > 0."""
        if len(rows) == 0:
            return []
        active, packed_row, cut = last_positions(rows)  # [B'], [k], [B']
        size = self.loss.loss_micro_batch or len(active)
        chunks: list[torch.Tensor | None] = [None]  # one part holding every row: nothing to order or split
        if size < len(active):
            lengths = cut + torch.tensor([len(prompts[b]) for b in active.tolist()])  # [B'] forward tokens per row
            order = torch.argsort(lengths, descending=True, stable=True)  # [B'] longest first
            chunks = list(order.split(size))
        parts = []
        for chunk in chunks:
            if chunk is None:
                keep, part_rows = torch.arange(len(rows)), rows  # [k]
            else:
                members = torch.zeros(len(active), dtype=torch.bool)
                members[chunk] = True
                keep = members[packed_row].nonzero().squeeze(1)  # [k_j] this part's rows of `rows`
                part_rows = rows.select(keep)
            batch, index = self.forward.pack(prompts, completions, part_rows, self.pad_id, self.device)
            targets = part_rows.token.to(self.device)  # [k_j]
            ref_logp = self.reference_logp(batch, index, targets) if self.loss.beta > 0 else None  # [k_j] | None
            parts.append(_Part(keep, batch, index, targets, part_rows, ref_logp))
        return parts

    def _loss_backward(self, part: _Part, first_iteration: bool) -> torch.Tensor:
        """Forward, fused loss and backward of one micro-batch; returns its TOTALS: [4] on the device."""
        c = self.loss
        set_training(self.model, True)  # LoRA dropout is active in the loss forward
        flat = self.forward.hidden(self.model, part.batch)  # [N, D]: b * L rows packed, fewer with shared prompts
        out = linear_pg_loss(
            flat,
            self.head,
            part.targets,
            part.rows.advantage.to(self.device),
            part.index,
            old_logp=part.old_logp,
            ref_logp=part.ref_logp,
            weights=part.rows.weight.to(self.device),
            eps_low=c.eps_low,
            eps_high=c.eps_high,
            beta=c.beta,
            temperature=self.temperature,
            reduction="sum",
            impl=c.impl,
            **self.head_kwargs,
        )
        out.loss.backward()  # a non-finite loss is caught after the gradient sum, before any update
        if first_iteration:
            part.old_logp = out.logp  # [k_j] fp32, detached: pi_old of later iterations
        no_ref = torch.zeros(1, device=self.device)
        delta = part.ref_logp - out.logp if part.ref_logp is not None else no_ref  # [k_j]
        return torch.stack(
            [
                out.loss.detach().float(),
                out.clipped.float().sum(),
                (delta.exp() - delta - 1).sum().float(),
                self.forward.tokens(part.batch).float(),
            ]
        )  # [4] TOTALS on the device: `apply` reads their sum once per iteration

    def _peak_mib(self) -> float:
        """This update's peak memory, the largest over ranks."""
        return float(distributed.all_reduce_max(torch.tensor([peak_memory_mib(self.device)]))[0])

    @torch.no_grad()
    def reference_logp(
        self, batch: PackedBatch | SharedPromptBatch | PrefixTreeBatch, index: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """log-probs of the selected tokens under the base model (adapter disabled, eval mode): [k] fp32."""
        set_training(self.model, False)
        with self.model.disable_adapter():
            flat = self.forward.hidden(self.model, batch)  # [N, D]
        return linear_logprob(
            flat, self.head, targets, index, temperature=self.temperature, impl=self.loss.impl, **self.head_kwargs
        )  # [k]
