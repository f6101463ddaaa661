"""Whether the tokrl engine can run a model: cheap checks first, then one tiny probe run.

The checks say what the engine needs from the model object: a transformers causal LM (decoder-only, an
output embedding) whose forward takes position ids. The probe then runs the engine itself, greedily, on two
left-padded prompts of different lengths for PROBE_TOKENS tokens, and compares every step's log-probs with
the model's own forward over the unpadded sequence, no cache. An exception (a layer asking for something
the engine's attention does not implement, a cache method the engine's cache lacks) or a log-prob off by
more than the dtype's tolerance (a mask, position or cache the model ignored) is the reason; the probe's
result is kept per model. The probe runs in eval mode without gradients, draws no random numbers and uses
a throwaway arena: it leaves the model, the RNG and the sampler's buffers as they were.
"""

from __future__ import annotations

import inspect
import weakref

import torch

from tokrl.models.forward import transformers_model
from tokrl.sampler.engine import run_eager
from tokrl.sampler.token_sampling import SamplingOptions

PROBE_TOKENS = 3
# |logp_engine - logp_forward| allowed, by dtype: rounding differs between a cached decode step and a full
# forward (attention kernels, reduction order); a structural fault is orders of magnitude larger and hits
# every token of a row (an ignored mask: the padded row; an ignored cache: every decode step). In 16 bits one
# token may exceed it: an MoE router's near-tie can pick another expert in the two forwards.
PROBE_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-3}
PROBE_TOLERANCE_16BIT = 0.1
PROBE_OUTLIERS_16BIT = 1

_PROBED: weakref.WeakKeyDictionary[torch.nn.Module, str | None] = weakref.WeakKeyDictionary()


def static_reason(body: torch.nn.Module) -> str | None:
    """What the model object lacks for the engine, without running it (None when nothing)."""
    config = getattr(body, "config", None)
    if config is None or not callable(getattr(body, "get_output_embeddings", None)):
        return f"{type(body).__name__} is not a transformers causal LM"
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder models are not supported"
    if body.get_output_embeddings() is None:
        return f"{type(body).__name__} has no output embedding"
    if "position_ids" not in inspect.signature(body.forward).parameters:
        return f"{type(body).__name__}.forward takes no position_ids"
    return None


def _probe_prompts(vocab: int) -> list[list[int]]:
    ids = [i % vocab for i in (3, 7, 11, 5)]
    return [ids[:3], ids[3:]]  # lengths 3 and 1: left padding and positions are exercised


@torch.no_grad()
def probe_reason(body: torch.nn.Module) -> str | None:
    """Run the engine on a tiny input and compare with the model's own forward (module docstring)."""
    vocab = body.get_output_embeddings().weight.shape[0]
    prompts, pad_id = _probe_prompts(vocab), 0
    was_training = body.training
    body.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            state = run_eager(body, prompts, 1, PROBE_TOKENS, SamplingOptions(do_sample=False), [-1], pad_id)
            gaps = []
            for row, prompt in enumerate(prompts):
                tokens = state.new_tokens[row].tolist()
                ids = torch.tensor([prompt + tokens[:-1]], device=state.tokens.device)  # [1, len + n - 1]
                logits = body(input_ids=ids).logits[0, len(prompt) - 1 :].float()  # [n, V]
                want = logits.log_softmax(-1).gather(1, state.new_tokens[row][:, None])[:, 0]  # [n]
                gaps += (state.new_logps[row] - want).abs().tolist()
    except Exception as err:  # noqa: BLE001 (any failure is a reason the engine cannot run the model)
        return f"the engine's probe run failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    finally:
        body.train(was_training)
    dtype = body.get_output_embeddings().weight.dtype
    tolerance = PROBE_TOLERANCE.get(dtype, PROBE_TOLERANCE_16BIT)
    allowed = 0 if dtype in PROBE_TOLERANCE else PROBE_OUTLIERS_16BIT
    off = sorted((g for g in gaps if not g <= tolerance), reverse=True)  # NaN counts as off
    if len(off) > allowed:
        return (
            f"the engine's log-probs differ from the model's own forward by up to {off[0]:.3g} at {len(off)} of "
            f"{len(gaps)} probe tokens (> {tolerance:g})"
        )
    return None


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why the engine cannot run `model` (None when it can); the probe's answer is kept per model."""
    body = transformers_model(model)
    reason = static_reason(body)
    if reason is not None:
        return reason
    if body not in _PROBED:
        _PROBED[body] = probe_reason(body)
    return _PROBED[body]
