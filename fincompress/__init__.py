"""fincompress: distil, prune and quantize financial-sentiment transformers for CPUs."""

__version__ = "0.1.0"
