"""The fidelity study's own code: CPU-sized base pre-training, the shapes screens, the vision probe and
the study's helper scripts. It imports the imagelora_dist package; the package never imports it."""
