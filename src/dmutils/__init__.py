"""dmutils: semantic-segmentation datasets from the attention maps of text-to-image diffusion models."""
__version__ = "0.1.0"
