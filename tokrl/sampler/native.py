"""The `tokrl` sampler: the engine of tokrl/sampler/engine.py; CUDA-graph decode steps on GPU, and an eager decode
that forwards each distinct prefix once elsewhere (tokrl/sampler/prefix_decode.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

from tokrl.models.forward import transformers_model
from tokrl.sampler import cuda_graph
from tokrl.sampler.adapters import WeightCopies, adapter_copies
from tokrl.sampler.prefix_decode import run_prefix_shared
from tokrl.sampler.registry import register_sampler
from tokrl.sampler.rows import cut_at_eos
from tokrl.sampler.support import unsupported_reason
from tokrl.sampler.token_sampling import SamplingOptions


@register_sampler("tokrl")
class TokrlSampler:
    """Static KV cache, one prefill per distinct prompt, sampling inside the step, log-probs per token.

    `stats` adds up this instance's calls; `graphed_share` is the share of their decode steps replayed from
    a CUDA graph (None where the sampler decodes eagerly by design, on CPU). `backend_for(device)` picks the
    graph backend (default `cuda_graph.backend_for`: CUDA graphs on CUDA, none elsewhere; a benchmark passes
    `lambda device: None` to time eager decoding on a GPU)."""

    def __init__(self, backend_for: Callable[[torch.device], cuda_graph.GraphBackend | None] | None = None) -> None:
        self.stats = cuda_graph.DecodeStats()
        self.graphed = False
        self.backend_for = backend_for

    @property
    def graphed_share(self) -> float | None:
        return self.stats.graphed_share if self.graphed else None

    def unsupported_reason(self, model: torch.nn.Module) -> str | None:
        return unsupported_reason(model)

    def weights(self, model: torch.nn.Module, body: torch.nn.Module) -> WeightCopies:
        """What the forwards read instead of the model's parameters: LoRA copies in the model's dtype."""
        return adapter_copies(body)

    def session(self, model: torch.nn.Module) -> AbstractContextManager[None]:
        """The context a call runs in (a subclass may switch adapters)."""
        return nullcontext()

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
    ) -> tuple[list[list[int]], list[list[float]]]:
        body = transformers_model(model)
        batch = len(prompts) * num_generations
        if batch == 0 or max_new_tokens == 0:
            return [[] for _ in range(batch)], [[] for _ in range(batch)]
        args = (body, prompts, num_generations, max_new_tokens, options, eos_ids, pad_id)
        backend = (self.backend_for or cuda_graph.backend_for)(body.get_output_embeddings().weight.device)
        with self.session(model):
            weights = self.weights(model, body)
            if backend is None:
                state = run_prefix_shared(*args, overrides=weights.copies)
            else:
                state, stats = cuda_graph.run_graphed(*args, backend=backend, weights=weights)
                self.stats.add(stats)
                self.graphed = True
        tokens = [cut_at_eos(row, eos_ids) for row in state.new_tokens[:batch].tolist()]  # B x <= n
        logps = state.new_logps[:batch].tolist()  # B x n
        return tokens, [lp[: len(t)] for lp, t in zip(logps, tokens, strict=True)]
