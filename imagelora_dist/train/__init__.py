"""Training: adapter methods, the DeepSpeed engine loop, and (separately) the Ray Train glue."""
