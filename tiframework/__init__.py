"""tiframework: train and measure textual-inversion embeddings for Stable Diffusion 1.x."""

__version__ = "0.1.0"
