"""orderwatch: follow Runa orders until they are final, durably and under a strict rate limit."""

__version__ = "0.1.0"
