"""The embedded default model: a small Stable-Diffusion-shaped model trained on the toy world."""
