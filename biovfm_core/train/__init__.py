"""The training engine: optimizer, precision, distribution, checkpoints, the loop."""
