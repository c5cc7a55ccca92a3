"""Image-LoRA modules, attach/detach, save/load, and parameter/FLOPs accounting."""
