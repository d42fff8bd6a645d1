"""What runs inside each user server: the jupyter-server extension that moves its state."""

from pathlib import Path

#: added to JUPYTER_CONFIG_PATH of every server the spawner starts: enables the extension
JUPYTER_CONFIG_DIR = str(Path(__file__).parent / "jupyter-config")
