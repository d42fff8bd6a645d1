"""Migrating JupyterHub servers between reclaimable hosts."""

__version__ = "0.1.0"
