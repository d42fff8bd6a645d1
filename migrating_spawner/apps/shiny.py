"""The `shiny` jupyter-server-proxy entry: the user's Shiny app at /user/NAME/shiny/.

The app is `~/shiny-app` (`SHINY_APP_DIR`), in the home so it moves with it; a first start
copies an example there. The launcher lets the browser page reconnect after a move (Shiny's
`session$allowReconnect("force")`): without it Shiny greys the page out when its websocket
drops and only a reload brings it back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LAUNCHER = HERE / "shiny_launch.R"
EXAMPLE = HERE / "shiny-example"


def setup_shiny() -> dict[str, Any]:
    return {
        "command": ["Rscript", str(LAUNCHER), "{port}", str(EXAMPLE)],
        "timeout": 60,
        "launcher_entry": {"title": "Shiny app"},
        "new_browser_tab": True,
    }
