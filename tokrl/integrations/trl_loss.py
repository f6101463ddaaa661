"""TRL's GRPO loss computed by `tokrl_kernels.linear_pg_loss` (use_tokrl_kernels(mode="pg_loss")).

TRL's `_compute_loss`, for loss_type in {grpo, bnpo, dr_grpo, dapo} at token-level importance sampling, is

    loss = sum_{b,t} m_bt * w_bt * ( -min(r A, clamp(r, 1 - eps_low, 1 + eps_high) A) + beta * kl_bt * c_bt )

with r = exp(logp - old), kl = exp(ref - logp) - (ref - logp) - 1 (k3), c = r when use_bias_correction_kl
else 1, m the completion (x tool) mask [B, T], and w the loss type's normaliser (over one micro-batch):

    grpo     1 / (B * max(sum_t m_bt, 1) * GA)        bnpo  1 / (max(sum m, 1) * GA)
    dr_grpo  1 / (B * max_completion_length * GA)     dapo  P * steps_per_generation / (max(N_items, 1) * GA)

(GA = gradient-accumulation steps in training, 1 in eval; P = processes; N_items = num_items_in_batch.)
That is `linear_pg_loss(..., weights=w, reduction="sum")` on the k rows where m = 1, with c = 1 exactly; with
c = r (TRL's default) the kernel's inputs are rewritten so its gradient is TRL's, on- and off-policy (`pg_rows`).
An MoE router load-balancing loss (TRL's `aux_loss_enabled`: `router_aux_loss_coef` != 0) is returned by the
same forward and added as TRL adds it: + coef * aux_loss / GA.

Everything else falls back to TRL's own `_compute_loss` (still on tokrl's fused head), with one warning per
reason: other loss types (cispo, sapo, vespo, luspo), sequence-level importance sampling, two-sided clipping
(`delta`), the off-policy sequence mask, the top-entropy token mask, vLLM importance-sampling correction, an
entropy bonus (needs entropy gradients), multimodal inputs.
The metrics TRL logs from its loss (entropy, kl, clip_ratio/*, aux_loss) are logged the same way, from the
kernel's detached per-row log-probs and a no-gradient entropy pass.

What ran is counted (`LossCalls`): every loss computation is either a kernel call or a fallback. The counts per
optimizer step and in total are kept in `trainer.tokrl_kernels_path` (whose "loss" entry names what actually ran),
and TRL's logs get `tokrl/loss_kernel_calls` and `tokrl/loss_fallbacks`: per optimizer step, averaged over the
logging window (each training call logs its indicator x the gradient-accumulation steps, and TRL averages).
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable

import torch
from trl import GRPOTrainer
from trl.trainer.utils import nanmax, nanmin

from tokrl.integrations import loss_calls
from tokrl.integrations.pg_rows import PGLossRequest

_EXTRA_INPUTS = (
    "pixel_values",
    "image_grid_thw",
    "pixel_attention_mask",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
    "num_tiles",
    "spatial_shapes",
)


def _grpo(trainer: GRPOTrainer, mask: torch.Tensor, inputs: dict, accumulation: float) -> torch.Tensor:
    return 1.0 / (mask.sum(-1, keepdim=True).clamp(min=1.0) * mask.size(0) * accumulation)  # [B, 1]


def _bnpo(trainer: GRPOTrainer, mask: torch.Tensor, inputs: dict, accumulation: float) -> torch.Tensor:
    return 1.0 / (mask.sum().clamp(min=1.0) * accumulation)  # []


def _dr_grpo(trainer: GRPOTrainer, mask: torch.Tensor, inputs: dict, accumulation: float) -> torch.Tensor:
    return mask.new_tensor(1.0 / (mask.size(0) * trainer.max_completion_length * accumulation))  # []


def _dapo(trainer: GRPOTrainer, mask: torch.Tensor, inputs: dict, accumulation: float) -> torch.Tensor:
    # num_items_in_batch counts the whole generation batch: rescale it to one accumulation window, as TRL does.
    normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / trainer.accelerator.num_processes
    if trainer.model.training:
        normalizer = normalizer * accumulation / trainer.args.steps_per_generation
    return 1.0 / normalizer  # []


# loss_type -> per-token weight w [B, T]-broadcastable; the loss types linear_pg_loss expresses exactly.
NORMALIZERS: dict[str, Callable[[GRPOTrainer, torch.Tensor, dict, float], torch.Tensor]] = {
    "grpo": _grpo,
    "bnpo": _bnpo,
    "dr_grpo": _dr_grpo,
    "dapo": _dapo,
}


def config_fallback_reason(trainer: GRPOTrainer) -> str | None:
    """Why this trainer's configuration needs TRL's own loss, or None when linear_pg_loss computes it."""
    args = trainer.args
    checks = [
        (trainer.loss_type not in NORMALIZERS, f"loss_type={trainer.loss_type!r} (supported: {sorted(NORMALIZERS)})"),
        (
            trainer.importance_sampling_level != "token",
            f"importance_sampling_level={trainer.importance_sampling_level!r} (supported: 'token')",
        ),
        (args.delta is not None, f"delta={args.delta} (two-sided clipping)"),
        (trainer.off_policy_mask_threshold is not None, "off_policy_mask_threshold (off-policy sequence mask)"),
        (trainer.top_entropy_quantile < 1.0, f"top_entropy_quantile={trainer.top_entropy_quantile} (entropy mask)"),
        (trainer.use_vllm and trainer.vllm_importance_sampling_correction, "vLLM importance-sampling correction"),
        (getattr(trainer, "_entropy_bonus_enabled", False), "an entropy bonus (entropy_coef / adaptive entropy)"),
    ]
    return next((reason for failed, reason in checks if failed), None)


def batch_fallback_reason(trainer: GRPOTrainer, inputs: dict) -> str | None:
    """Why this batch needs TRL's own loss, or None."""
    extra = [key for key in _EXTRA_INPUTS if inputs.get(key) is not None]
    return f"multimodal / extra model inputs {extra}" if extra else None


def _warn_once(trainer: GRPOTrainer, reason: str) -> None:
    warned: set[str] = trainer.__dict__.setdefault("_tokrl_fallback_warned", set())
    if reason not in warned:
        warned.add(reason)
        warnings.warn(
            f"use_tokrl_kernels(mode='pg_loss'): {reason} is not expressible by linear_pg_loss; using TRL's loss "
            "on tokrl's fused log-probs instead.",
            UserWarning,
            stacklevel=3,
        )


def _log_metrics(trainer, mask, advantages, out, old_rows, ref_rows, request: PGLossRequest) -> None:
    """The metrics TRL's _compute_loss logs (entropy, kl, clip_ratio/*), from the kernel's detached rows."""
    mode = "train" if trainer.model.training else "eval"
    sel = mask.bool()  # [B, T]

    def grid(rows: torch.Tensor) -> torch.Tensor:  # [k] -> [B, T], zero off the mask
        return rows.new_zeros(mask.shape).masked_scatter(sel, rows)

    def global_mean(rows: torch.Tensor) -> float:
        totals = trainer.accelerator.reduce(torch.stack([rows.float().sum(), mask.sum().float()]), reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

    def sequence_means(rows: torch.Tensor) -> torch.Tensor:  # [B]
        return trainer.accelerator.gather(grid(rows.float()).sum(-1) / mask.sum(-1))

    ratio = torch.ones_like(out.logp) if old_rows is None else torch.exp(out.logp - old_rows)  # [k]
    if trainer.beta != 0.0:
        delta = ref_rows - out.logp  # [k]
        kl = torch.exp(delta) - delta - 1.0  # [k]
        trainer._metrics[mode]["kl"].append(global_mean(kl * ratio if request.ratio_weighted_kl else kl))
    trainer._metrics[mode]["entropy"].append(global_mean(out.entropy))
    low = (ratio < 1 - request.eps_low) & (advantages < 0)  # [k]
    high = (ratio > 1 + request.eps_high) & (advantages > 0)  # [k]
    trainer._metrics[mode]["clip_ratio/low_mean"].append(global_mean(low))
    trainer._metrics[mode]["clip_ratio/high_mean"].append(global_mean(high))
    trainer._metrics[mode]["clip_ratio/region_mean"].append(global_mean(low | high))
    trainer._metrics[mode]["clip_ratio/low_min"].append(nanmin(sequence_means(low)).item())
    trainer._metrics[mode]["clip_ratio/high_max"].append(nanmax(sequence_means(high)).item())


def pg_compute_loss(trainer: GRPOTrainer, model: torch.nn.Module, inputs: dict, *, fallback) -> torch.Tensor:
    """TRL's `_compute_loss` for the supported configurations, as one `linear_pg_loss` call inside the forward."""
    reason = config_fallback_reason(trainer) or batch_fallback_reason(trainer, inputs)
    loss_calls.record(trainer, reason)
    if reason is not None:
        _warn_once(trainer, reason)
        return fallback(model, inputs)
    prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]  # [B, P], [B, T]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # [B, P + T]
    attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)  # [B, P + T]
    mask = inputs["completion_mask"] if "tool_mask" not in inputs else inputs["completion_mask"] * inputs["tool_mask"]
    mask = mask.float()  # [B, T]
    sel, t_len = mask.bool(), completion_ids.size(1)
    # Score exactly the loss tokens: their row-major order is the order the forward builds its rows in.
    labels = input_ids.masked_fill(attention_mask == 0, -100)  # [B, P + T]
    labels[:, :-t_len] = -100
    labels[:, -t_len:] = labels[:, -t_len:].masked_fill(~sel, -100)

    advantages = inputs["advantages"]
    advantages = (advantages.unsqueeze(1) if advantages.dim() == 1 else advantages).expand(mask.shape)  # [B, T]
    old, ref = inputs.get("old_per_token_logps"), inputs.get("ref_per_token_logps")  # [B, T] | None
    accumulation = trainer.current_gradient_accumulation_steps if trainer.model.training else 1.0
    weights = NORMALIZERS[trainer.loss_type](trainer, mask, inputs, accumulation).expand(mask.shape)  # [B, T]
    request = PGLossRequest(
        advantages=advantages[sel].float(),
        old_logp=None if old is None else old[sel].float(),
        ref_logp=None if trainer.beta == 0.0 else ref[sel].float(),
        weights=weights[sel].float(),
        eps_low=trainer.epsilon_low,
        eps_high=trainer.epsilon_high,
        beta=trainer.beta,
        ratio_weighted_kl=trainer.beta != 0.0 and trainer.args.use_bias_correction_kl,
    )
    router = {"output_router_logits": True} if trainer.aux_loss_enabled else {}  # as TRL asks for it
    with trainer.accelerator.autocast():
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            fused_lm_head=True,
            pg_loss=request,
            **router,
        )
    _log_metrics(trainer, mask, request.advantages, out, request.old_logp, request.ref_logp, request)
    if not trainer.aux_loss_enabled:
        return out.loss
    # TRL: + coef * aux / GA in training (its policy loss is already divided by GA), the metric gathered
    mode = "train" if trainer.model.training else "eval"
    trainer._metrics[mode]["aux_loss"].append(trainer.accelerator.gather_for_metrics(out.aux_loss).mean().item())
    return out.loss + trainer.router_aux_loss_coef * out.aux_loss / accumulation


def install_pg_loss(trainer: GRPOTrainer) -> None:
    """Make `trainer._compute_loss` the linear_pg_loss path, keeping TRL's as the fallback."""
    fallback = trainer._compute_loss  # the class's bound method (TRL's loss, on the patched fused head)

    def _compute_loss(self: GRPOTrainer, model: torch.nn.Module, inputs: dict) -> torch.Tensor:
        return pg_compute_loss(self, model, inputs, fallback=fallback)

    trainer._compute_loss = types.MethodType(_compute_loss, trainer)
