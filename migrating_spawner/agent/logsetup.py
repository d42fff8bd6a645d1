"""The agent processes' logging: one format for `agent.server` and `agent.register`."""

from __future__ import annotations

import logging
import sys

FORMAT = "[%(levelname)1.1s %(asctime)s agent %(name)s] %(message)s"


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr (the agent's log file, or the journal under systemd) at `level`."""
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr)
