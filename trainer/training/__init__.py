"""The training stage: load the 4-bit base, attach LoRA, plan memory, train with checkpoints, save."""
