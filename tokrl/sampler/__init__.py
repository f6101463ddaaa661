"""Samplers that turn prompts into completions: `hf` (HF generate), `tokrl` (static KV cache, one prefill per
distinct prompt, sampling inside the step, CUDA-graph decode steps on GPU) and `tokrl-merged` (the same with
LoRA merged into copies of the base weights: fewer kernels, more memory), chosen by name."""

from tokrl.sampler import hf, merged, native  # noqa: F401  (registers the samplers)
from tokrl.sampler.registry import AUTO, SAMPLERS, Sampler, resolve_sampler, sampler_names
from tokrl.sampler.token_sampling import SamplingOptions

__all__ = ["AUTO", "SAMPLERS", "Sampler", "SamplingOptions", "resolve_sampler", "sampler_names"]
