"""mpcformer: fast, accurate, private Transformer inference with secure multi-party computation."""

__version__ = "0.1.0"
__all__ = ["__version__"]
