"""Head influence probes (pure torch); the Ray fan-out lives beside them, never inside."""
