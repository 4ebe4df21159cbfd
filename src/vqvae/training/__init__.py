"""Training: the shared loop, the two stages, checkpoints and distributed setup."""
