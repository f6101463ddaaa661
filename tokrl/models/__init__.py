"""Models: loading by name, the tiny test model, LoRA with its LM-head guard, and what the loss reads from a model.

Layer: imports tokrl.infra only (and transformers, peft); the sampler, the config, the stages, run management
and the trainer import it. `names` is light (no torch): the config schema reads its names from there.
"""
