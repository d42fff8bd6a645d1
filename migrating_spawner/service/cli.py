"""`jupyterhub-migrate`: the control API from a terminal.

Hub URL and token come from JUPYTERHUB_URL and JUPYTERHUB_API_TOKEN, or --url/--token.
Every verb prints a readable table, or JSON with --json for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import requests

SERVICE = "migrate"


class CLIError(Exception):
    pass


class Client:
    def __init__(self, url: str, token: str, service: str = SERVICE):
        if not url:
            raise CLIError("no hub URL: set JUPYTERHUB_URL or pass --url")
        if not token:
            raise CLIError("no token: set JUPYTERHUB_API_TOKEN or pass --token")
        self.base = url.rstrip("/") + f"/services/{service}/api/"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {token}"

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        try:
            resp = self.session.request(method, self.base + path, json=body, timeout=timeout)
        except requests.RequestException as e:
            raise CLIError(f"cannot reach {self.base}: {e}") from None
        try:
            data = resp.json()
        except ValueError:
            data = {"message": resp.text.strip()[:300]}
        if resp.status_code >= 400:
            raise CLIError(f"{resp.status_code}: {data.get('message', data)}")
        return data


def split_server(spec: str) -> tuple[str, str]:
    user, _, server = spec.partition("/")
    return user, server


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[str(r.get(c) if r.get(c) is not None else "-") for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> tuple[Any, str]:
    client = Client(args.url, args.token)
    if args.verb == "hosts":
        data = client.call("GET", "hosts")
        rows = [{**h, "servers": ",".join(h["servers"])} for h in data["hosts"]]
        return data, table(rows, ["id", "address", "instance_type", "market", "servers"])
    if args.verb == "list":
        data = client.call("GET", "servers")
        return data, table(data["servers"], ["user", "server", "state", "host_id", "address"])
    if args.verb == "info":
        user, server = split_server(args.server)
        data = client.call("GET", f"servers/{user}/{server}")
        lines = [f"{k}: {v}" for k, v in data.items() if k != "events"]
        lines += ["events:"] + [f"  {e['message']}" for e in data.get("events", [])]
        return data, "\n".join(lines)
    if args.verb == "migrate":
        user, server = split_server(args.server)
        path = f"servers/{user}/{server}/migrate" + ("?wait=true" if args.wait else "")
        data = client.call("POST", path, {}, timeout=600 if args.wait else 30)
        return data, f"{args.server}: {data['state']} on {data['host_id']} ({data['address']})"
    if args.verb == "reclaim":
        data = client.call("POST", f"hosts/{args.host}/reclaim", {"notice_seconds": args.notice})
        moving = ", ".join(data["moving"]) or "no servers"
        return data, f"{args.host} will be reclaimed at {data['notice']['time']}; moving {moving}"
    raise CLIError(f"unknown verb {args.verb}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jupyterhub-migrate", description=__doc__.splitlines()[0])
    p.add_argument("--url", default=os.environ.get("JUPYTERHUB_URL", ""), help="hub URL")
    p.add_argument("--token", default=os.environ.get("JUPYTERHUB_API_TOKEN", ""), help="API token")
    p.add_argument("--json", action="store_true", help="print JSON")
    verbs = p.add_subparsers(dest="verb", required=True)
    verbs.add_parser("hosts", help="list hosts and the servers on them (admin)")
    verbs.add_parser("list", help="list servers you may see")
    info = verbs.add_parser("info", help="state, host and recent events of a server")
    info.add_argument("server", metavar="USER[/SERVER]")
    migrate = verbs.add_parser("migrate", help="move a server to a new host now")
    migrate.add_argument("server", metavar="USER[/SERVER]")
    migrate.add_argument("--wait", action="store_true", help="wait until the move is done")
    reclaim = verbs.add_parser("reclaim", help="reclaim a host with a notice (admin; local hosts)")
    reclaim.add_argument("host")
    reclaim.add_argument("--notice", type=float, default=120, help="seconds of notice")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        data, text = run(args)
    except CLIError as e:
        print(f"jupyterhub-migrate: {e}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2, default=str) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
