"""Proxy side of jupyterhub-migrating-spawner: hold a server's route while it moves."""

from .hold import HoldServer
from .proxy import MigratingProxy

__all__ = ["HoldServer", "MigratingProxy"]
