"""The move engine: a scheduler that runs moves of anything that implements MovableServer.

It knows servers and the proxy only through the protocols in protocol.py, so nothing in
here imports the spawner, the controller or the proxy.
"""

from .clock import Clock
from .protocol import MovableServer, NoRouteHold, RouteHold
from .record import PREPARING, SWITCHED, MoveRecord
from .scheduler import MoveError, MoveScheduler

__all__ = [
    "PREPARING",
    "SWITCHED",
    "Clock",
    "MovableServer",
    "MoveError",
    "MoveRecord",
    "MoveScheduler",
    "NoRouteHold",
    "RouteHold",
]
