"""Training: the Algorithm 1 step, the shared loop, checkpoints, the driver."""
