"""dbintel: horizontally scalable database monitoring (coordinator + agents)."""

__version__ = "0.1.0"
