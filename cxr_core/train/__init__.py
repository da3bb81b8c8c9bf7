"""Training: configuration, run directories, checkpoints, the trainer, losses, sampling and detached jobs."""
