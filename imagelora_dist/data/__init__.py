"""Screenshot data: synthetic GUI screens and the collator that turns samples into model inputs."""
