"""Server start with the jsonschema pin, next to the newest jsonschema.

Every spawn and every move starts a jupyter-server on the new host; its start is part of
what a user waits for. jsonschema 4.24+ imports rfc3987-syntax, which compiles ~35 Lark
parsers at import time (jupyter_server#1559); the package pins jsonschema below 4.24. This
script starts the same `jupyter server` N times with the project's venv as installed and N
times with jsonschema 4.26 + rfc3987-syntax put first on PYTHONPATH (what pip picks without
the pin), and reports the time to the first answer of /api and the CPU seconds used by then.

    .venv/bin/python benchmarks/server_start.py [--runs 5]

It writes the section "## Server start (jsonschema pin)" of benchmarks/results.md.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from results import replace_section

JUPYTER = Path(sys.executable).with_name("jupyter")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_once(
    env: dict, root: str, timeout: float = 120, kill: bool = False
) -> tuple[float, float]:
    """Seconds from exec to the first answer of /api, and the CPU seconds used by then.
    The server is then terminated, or killed (`kill`: a loaded machine's clean shutdown
    can take longer than the start)."""
    port = free_port()
    cmd = [str(JUPYTER), "server", "--no-browser", "--allow-root", f"--port={port}",
           "--ServerApp.token=", f"--ServerApp.root_dir={root}"]  # fmt: skip
    began = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = began + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter server exited with {proc.returncode}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api", timeout=1).read()
                return time.monotonic() - began, cpu_seconds(proc.pid)
            except OSError:
                time.sleep(0.02)
        raise TimeoutError(f"jupyter server did not answer /api within {timeout:.0f} s")
    finally:
        if kill:
            proc.kill()
            proc.wait()
        else:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        unpinned = Path(tmp, "unpinned")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(unpinned),
             "jsonschema==4.26.0", "rfc3987-syntax==1.1.0", "lark"],
            check=True,
        )  # fmt: skip
        pinned_env = dict(os.environ)
        unpinned_env = dict(os.environ, PYTHONPATH=str(unpinned))
        envs = {
            "pinned (jsonschema<4.24)": pinned_env,
            "unpinned (jsonschema 4.26 + rfc3987-syntax)": unpinned_env,
        }
        rows = {name: [] for name in envs}
        for _ in range(args.runs):  # interleaved, so load on the machine hits both alike
            for name, env in envs.items():
                rows[name].append(start_once(env, tmp))
    lines = [
        "## Server start (jsonschema pin)",
        "",
        f"`jupyter server` with this venv's extensions, {args.runs} starts each, interleaved;",
        "median time from exec to the first answer of /api, and CPU seconds used by then.",
        "",
        "| jsonschema | start (s) | CPU (s) |",
        "|---|---|---|",
    ]
    medians = {}
    for name, runs in rows.items():
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        medians[name] = wall
        lines.append(f"| {name} | {wall:.2f} | {cpu:.2f} |")
    pinned, unpinned = medians.values()
    ratio = f"{unpinned / pinned:.2f}x faster ({unpinned - pinned:.2f} s less)"
    lines += ["", f"The pin starts a server {ratio}."]
    text = "\n".join(lines) + "\n"
    print(text)
    replace_section(text)


if __name__ == "__main__":
    main()
