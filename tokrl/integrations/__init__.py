"""Bridges from other training libraries to tokrl's kernels (optional extras; nothing here is imported by tokrl).

- `tokrl.integrations.trl`: TRL's `GRPOTrainer` with its fused LM head (and optionally its loss) computed by
  `tokrl_kernels` (`pip install tokrl[trl]`).
"""
