"""fincompress: distil, prune and quantize financial-sentiment transformers for CPUs."""

__version__ = "0.1.0"


def load(path, threads=None, batch_size=32, max_length=128, precision="auto"):
    """Open any artifact fincompress writes; see :func:`fincompress.api.load`."""
    from fincompress.api import load as _load  # torch and the engines load on first use

    return _load(path, threads, batch_size, max_length, precision)
