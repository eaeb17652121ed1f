"""podnet: overlay networking for containers on real Linux kernel datapaths."""

__version__ = "0.1.0"
