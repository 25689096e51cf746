"""Two-stage fine-tuning on Lightning (DeepSpeed on GPUs, DDP on gloo on CPU)."""
