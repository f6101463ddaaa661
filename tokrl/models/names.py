"""Names that mean something of their own wherever a model or its LoRA targets are named (config, CLI, loading)."""

TINY_NAME = "tiny"  # the built-in tiny model (tokrl.models.tiny)
ALL_LINEAR = "all-linear"  # every linear layer of the decoder (tokrl.models.lora_targets)
