"""Live order books from a simulated exchange, fanned out through Redis pub/sub."""

__version__ = "0.1.0"
