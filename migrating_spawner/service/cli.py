"""`jupyterhub-migrate`: the control API from a terminal.

Hub URL and token come from JUPYTERHUB_URL and JUPYTERHUB_API_TOKEN, or --url/--token.
With --gateway-url, hosts, list, info and reclaim act on a Jupyter gateway's moving kernels
and their hosts instead (token: --token or JUPYTER_GATEWAY_AUTH_TOKEN, never the hub's).
Every verb prints a readable table, or JSON with --json for scripts. Flags go before or after
the verb.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

from ..batch.jobs import FINISHED, is_job_id, resolve_value
from ..hosts.base import MAX_NOTICE_SECONDS
from .http import CLIError, JSONClient
from .kernels import KernelHosts

SERVICE = "migrate"
#: the verbs that also work against a gateway's kernels (`--gateway-url`)
GATEWAY_VERBS = ("hosts", "list", "info", "reclaim")


class Client(JSONClient):
    """The hub's `migrate` service."""

    def __init__(self, url: str, token: str, service: str = SERVICE):
        if not url:
            raise CLIError("no hub URL: set JUPYTERHUB_URL or pass --url")
        if not token:
            raise CLIError("no token: set JUPYTERHUB_API_TOKEN or pass --token")
        what = f"a JupyterHub with the `{service}` service"
        super().__init__(url, token, f"services/{service}/api/", what)


def split_server(spec: str) -> tuple[str, str]:
    user, _, server = spec.partition("/")
    return user, server


def server_path(spec: str, verb: str = "") -> str:
    """The API path of USER[/SERVER] (and a verb of it): servers/alice/suspend for the
    default server, servers/alice/lab/suspend for a named one."""
    user, server = split_server(spec)
    return "/".join(["servers", user, *([server] if server else []), *([verb] if verb else [])])


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[str(r.get(c) if r.get(c) is not None else "-") for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def reclaimed(data: dict[str, Any], what: str) -> str:
    moving = ", ".join(data["moving"]) or f"no {what}s"
    return f"{data['host_id']} will be reclaimed at {data['notice']['time']}; moving {moving}"


def when(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "-"


def clock(epoch: float | None) -> str:
    """A time of today as the page shows it (21:20:58); another day's with its date."""
    if not epoch:
        return "-"
    day = time.strftime("%Y-%m-%d", time.localtime(epoch))
    today = day == time.strftime("%Y-%m-%d")
    return time.strftime("%H:%M:%S", time.localtime(epoch)) if today else when(epoch)


def duration(seconds: float | None) -> str:
    """h:mm:ss (m:ss under an hour), as the page's uptime."""
    if seconds is None:
        return "-"
    minutes, secs = divmod(max(0, round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return "-"


def checkpoint_text(kept: dict[str, Any] | None, checkpoint_id: str | None = None) -> str:
    """A checkpoint as the page says it: 21:20:58, 83.4 kB, move final (its id)."""
    if not kept:
        return checkpoint_id or "-"
    parts = [clock(kept.get("time")), size(kept.get("bytes")), kept.get("reason")]
    return ", ".join(p for p in parts if p and p != "-") + f" ({kept['id']})"


def info_text(data: dict[str, Any]) -> str:
    """`info`: a server's facts as the page shows them, `-` where there is none; the events
    with their times. `--json` prints the API's raw values."""
    move = data.get("move") or {}
    price = data.get("hourly_price")
    pending = data.get("pending")
    uptime = data.get("uptime")
    rows = [
        ("Server", f"{data['user']}/{data.get('server') or ''}"),
        ("State", data["state"] + (f" ({pending} pending)" if pending else "")),
        ("Host", data.get("host_id")),
        ("Address", data.get("address")),
        ("URL", data.get("url")),
        ("Provider", data.get("provider")),
        ("Instance", data.get("instance_id")),
        ("Instance type", data.get("instance_type")),
        ("Market", data.get("market")),
        ("Hourly price", f"${price:.4f} per hour" if isinstance(price, (int, float)) else None),
        ("Started", clock(data.get("started")) if data.get("started") else None),
        ("Uptime", f"{duration(uptime)} since it started (moves included)" if uptime else None),
        ("Home", data.get("home_mode")),
        (
            "Last checkpoint",
            checkpoint_text(data.get("last_checkpoint"), data.get("checkpoint_id")),
        ),
        ("Suspended since", clock(data["suspended"]) if data.get("suspended") else None),
        ("Actions", ", ".join(data.get("actions") or []) or None),
    ]
    if move:
        hosts = f"from {move.get('from') or '-'} to {move.get('to') or '(not yet chosen)'}"
        phase = f", {move['phase']}" if move.get("phase") else ""
        rows.append(("Move", f"{move.get('reason') or 'moving'}: {hosts}{phase}"))
    if data.get("deadline"):
        rows.append(("Deadline", clock(data["deadline"])))
    width = max(len(label) for label, _ in rows) + 1
    lines = [
        f"{label + ':':<{width}} {value if value not in (None, '') else '-'}"
        for label, value in rows
    ]
    events = data.get("events") or []
    lines += ["Events:"] + [f"  {clock(e.get('time'))}  {e['message']}" for e in events]
    return "\n".join(lines)


def suspended_text(target: str, data: dict[str, Any]) -> str:
    kept = data.get("last_checkpoint")
    if kept:
        what = f"checkpoint {kept['id']} ({size(kept['bytes'])}, {when(kept['time'])})"
    else:
        what = "its kernels' state in the home (files on shared storage)"
    text = f"{target}: {data['state']}, host released; kept {what}"
    return "\n".join([text, *data.get("jobs", [])])  # batch jobs paused with it


def lost_text(lost: dict[str, Any]) -> str:
    """What an entry says was lost, in one cell."""
    parts = []
    if lost.get("files"):
        parts.append(lost["files"])
    for kernel_id, names in (lost.get("variables") or {}).items():
        parts.append(f"kernel {kernel_id[:8]}: {', '.join(names)}")
    for cell in lost.get("interrupted_cells") or []:
        first = (cell.get("cell") or "").strip().splitlines()[:1]
        parts.append(
            f"kernel {cell['kernel_id'][:8]} cell interrupted {first[0]!r}"
            if first
            else f"kernel {cell['kernel_id'][:8]} cell interrupted"
        )
    for kernel_id in lost.get("kernels_fresh") or []:
        parts.append(f"kernel {kernel_id[:8]} fresh")
    return "; ".join(parts) or "-"


def history_rows(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for e in entries:
        hold = e.get("hold_seconds")
        rows.append(
            {
                "time": when(e["time"]),
                "kind": e["kind"] + ("" if e.get("outcome", "ok") == "ok" else " (failed)"),
                "reason": e["reason"] + (f" ({e['by']})" if e.get("by") else ""),
                "from": e.get("from_host"),
                "to": e.get("to_host"),
                "hold": f"{hold:.2f} s" if hold is not None else None,
                "bytes": size(e.get("bytes_moved")) if e.get("bytes_moved") else None,
                "lost": lost_text(e.get("lost") or {}),
            }
        )
    return rows


def run(args: argparse.Namespace) -> tuple[Any, str]:
    if args.gateway_url and args.verb != "gateway":
        return run_gateway(args)
    client = Client(args.url, args.token or os.environ.get("JUPYTERHUB_API_TOKEN", ""))
    if args.verb == "gateway":  # the TCP gateway (not --gateway-url: kernel gateways)
        return run_tcp_gateway(client, args)
    if args.verb == "hosts":
        data = client.call("GET", "hosts")
        rows = [{**h, "servers": ",".join(h["servers"])} for h in data["hosts"]]
        return data, table(rows, ["id", "address", "instance_type", "market", "servers"])
    if args.verb == "list":
        data = client.call("GET", "servers")
        return data, table(data["servers"], ["user", "server", "state", "host_id", "address"])
    if args.verb == "info":
        data = client.call("GET", server_path(args.target))
        return data, info_text(data)
    if args.verb == "migrate":
        path = server_path(args.server, "migrate") + ("?wait=true" if args.wait else "")
        data = client.call("POST", path, {}, timeout=600 if args.wait else 30)
        if args.wait:
            old = (data.get("move") or {}).get("from") or "-"
            text = f"{args.server}: moved from {old} to {data['host_id']} ({data['address']})"
        else:
            text = f"{args.server}: moving from {data['host_id']} ({data['address']})"
        return data, text
    if args.verb == "reclaim":
        data = client.call("POST", f"hosts/{args.host}/reclaim", {"notice_seconds": args.notice})
        return data, reclaimed(data, "server")
    if args.verb == "suspend":
        data = client.call("POST", server_path(args.target, "suspend"), {}, timeout=600)
        return data, suspended_text(args.target, data)
    if args.verb == "resume":
        path = server_path(args.target, "resume") + ("?wait=true" if args.wait else "")
        data = client.call("POST", path, {}, timeout=600)
        done, doing = (
            ("started fresh", "starting fresh") if data.get("fresh") else ("resumed", "resuming")
        )
        kept = " (nothing was kept to resume)" if data.get("fresh") else ""
        if data["state"] == "Running":
            return data, f"{args.target}: {done} on {data['host_id']} ({data['address']}){kept}"
        return data, f"{args.target}: {data['state']} ({doing} on a new host){kept}"
    if args.verb == "submit":
        return submit(client, args)
    if args.verb == "jobs":
        data = client.call("GET", "jobs" + (f"?user={args.user}" if args.user else ""))
        return data, table(job_rows(data["jobs"]), JOB_COLUMNS)
    if args.verb == "cancel" and is_job_id(args.target):
        data = client.call("POST", f"jobs/{args.target}/cancel", {}, timeout=600)
        return data, f"{args.target}: {data['status']}. {data['message']}"
    if args.verb == "cancel":
        data = client.call("POST", server_path(args.target, "cancel"), {}, timeout=600)
        return data, f"{args.target}: cancelled. {data['lost']}"
    if args.verb == "history":
        data = client.call("GET", server_path(args.target, "history"))
        columns = ["time", "kind", "reason", "from", "to", "hold", "bytes", "lost"]
        return data, table(history_rows(data["history"]), columns)
    raise CLIError(f"unknown verb {args.verb}")


JOB_COLUMNS = ["id", "user", "name", "status", "submitted", "took", "moves", "cost", "message"]


def job_rows(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for j in jobs:
        took = j.get("duration")
        cost = j.get("cost")
        rows.append(
            {
                **j,
                "submitted": when(j["submitted"]),
                "took": f"{took:.0f} s" if took is not None else None,
                "cost": f"{cost:.4f}" if cost is not None else None,
                # whole (the last column): a host name at its end is not cut off; an
                # error's first line (the rest is in `jobs --json` and the log)
                "message": (j.get("error") or j.get("message") or "").strip().split("\n")[0],
            }
        )
    return rows


def job_text(job: dict[str, Any]) -> str:
    lines = [f"{job['id']}: {job['status']} ({job['notebook']} of {job['user']})"]
    lines += [f"warning: {w}" for w in job.get("warnings", [])]
    if job.get("error"):
        lines.append(f"error: {job['error']}")
    if job.get("output") or job.get("log"):
        lines.append(f"output: {job.get('output') or '-'}; log: {job.get('log') or '-'}")
    return "\n".join(lines)


def submit(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    """`submit NOTEBOOK [-p name value ...]`: values read as papermill's -p does."""
    body: dict[str, Any] = {"notebook": args.notebook}
    if args.profile:
        body["profile"] = args.profile
    if args.name:
        body["name"] = args.name
    if args.kernel:
        body["kernel"] = args.kernel
    if args.user:
        body["user"] = args.user
    if args.parameters:
        body["parameters"] = {name: resolve_value(value) for name, value in args.parameters}
    job = client.call("POST", "jobs", body)
    if args.wait:
        while job["status"] not in FINISHED:
            time.sleep(1)
            job = client.call("GET", f"jobs/{job['id']}")
    return job, job_text(job)


def run_tcp_gateway(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    """`gateway connect|disconnect|list|info`: ports of the port-pool TCP gateway."""
    columns = ["address", "user", "server", "target_port", "state", "allowed"]
    if args.gateway_verb == "list":
        data = client.call("GET", "gateway")
        return data, table(gateway_rows(data["ports"]), columns)
    user, server = split_server(args.target)
    if args.gateway_verb == "connect":
        body: dict[str, Any] = {"target_port": args.target_port}
        if args.allowed_cidrs:
            body["allowed_cidrs"] = [c.strip() for c in args.allowed_cidrs.split(",") if c]
        data = client.call("POST", f"gateway/{user}/{server}", body)
        return data, (
            f"{args.target} port {args.target_port}: connect to {data['address']}"
            f" (from {', '.join(data['allowed_cidrs'])})"
        )
    if args.gateway_verb == "disconnect":
        data = client.call("DELETE", f"gateway/{user}/{server}/{args.port}")
        return data, f"{args.target}: gateway port {args.port} given back"
    data = client.call("GET", f"gateway/{user}/{server}")
    rows = gateway_rows(data["ports"])
    return data, table(rows, columns) if rows else "no gateway ports"


def gateway_rows(ports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**p, "allowed": ",".join(p.get("allowed_cidrs") or [])} for p in ports]


def run_gateway(args: argparse.Namespace) -> tuple[Any, str]:
    """The verbs for a gateway's kernels (see service/kernels.py)."""
    if args.verb == "migrate":
        raise CLIError("migrate moves hub servers; to move a kernel, reclaim its host")
    if args.verb not in GATEWAY_VERBS:
        raise CLIError(
            f"{args.verb} works against a hub, not with --gateway-url; a gateway's verbs are "
            + ", ".join(GATEWAY_VERBS)
        )
    token = args.token or os.environ.get("JUPYTER_GATEWAY_AUTH_TOKEN", "")
    kernels = KernelHosts.connect(args.gateway_url, token, args.root_dir)
    if args.verb == "hosts":
        data = kernels.list_hosts()
        return data, table(data["hosts"], ["id", "address", "kernel_id", "instance_type"])
    if args.verb == "list":
        data = kernels.list_kernels()
        return data, table(data["kernels"], ["id", "name", "execution_state", "host_id", "address"])
    if args.verb == "info":
        data = kernels.kernel_info(args.target)
        lines = [f"{k}: {v}" for k, v in data.items() if k != "hosts"]
        lines += ["hosts:"] + [f"  {h['id']} ({h['address']})" for h in data["hosts"]]
        return data, "\n".join(lines)
    data = kernels.reclaim(args.host, args.notice)  # reclaim: the one verb left
    return data, reclaimed(data, "kernel")


def seconds(text: str) -> float:
    """A notice: a number of seconds from 0 to MAX_NOTICE_SECONDS (the API's range)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 <= value <= MAX_NOTICE_SECONDS):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a notice: give a number of seconds from 0 to "
            f"{MAX_NOTICE_SECONDS} (e.g. 10)"
        )
    return value


def common_flags(suppress: bool) -> argparse.ArgumentParser:
    """The flags every verb takes, before or after it. After the verb they default to
    SUPPRESS, so a flag given before the verb is not reset by the verb's parser."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    p = argparse.ArgumentParser(add_help=False)
    env = os.environ.get
    p.add_argument("--url", default=default(env("JUPYTERHUB_URL", "")), help="hub URL")
    p.add_argument(
        "--token",
        default=default(""),
        help="API token (default: JUPYTERHUB_API_TOKEN; with --gateway-url, the gateway's: "
        "JUPYTER_GATEWAY_AUTH_TOKEN, never the hub's)",
    )
    p.add_argument("--json", action="store_true", default=default(False), help="print JSON")
    p.add_argument(
        "--gateway-url",
        default=default(""),
        help="act on this Jupyter gateway's moving kernels instead of a hub's servers",
    )
    p.add_argument(
        "--root-dir",
        default=default(env("JUPYTER_MIGRATING_ROOT_DIR", "")),
        help="with --gateway-url: the kernels' hosts folder (their kernelspecs' root_dir; "
        "found from the gateway's kernelspecs when absolute)",
    )
    return p


def parser() -> argparse.ArgumentParser:
    flags = [common_flags(suppress=True)]
    p = argparse.ArgumentParser(
        prog="jupyterhub-migrate",
        description=__doc__.splitlines()[0],
        parents=[common_flags(suppress=False)],
    )
    verbs = p.add_subparsers(dest="verb", required=True)
    verbs.add_parser("hosts", parents=flags, help="list hosts and what runs on them (admin)")
    verbs.add_parser("list", parents=flags, help="list servers you may see (or kernels)")
    info = verbs.add_parser(
        "info", parents=flags, help="state, host and events of a server (or a kernel)"
    )
    info.add_argument("target", metavar="USER[/SERVER] | KERNEL_ID")
    migrate = verbs.add_parser("migrate", parents=flags, help="move a server to a new host now")
    migrate.add_argument("server", metavar="USER[/SERVER]")
    migrate.add_argument("--wait", action="store_true", help="wait until the move is done")
    reclaim = verbs.add_parser(
        "reclaim",
        parents=flags,
        help="reclaim a host with a notice (admin; local hosts, or EC2 through AWS FIS)",
    )
    reclaim.add_argument("host")
    reclaim.add_argument("--notice", type=seconds, default=120, help="seconds of notice")
    suspend = verbs.add_parser(
        "suspend",
        parents=flags,
        help="final checkpoint of files and kernels, stop, release the host",
    )
    suspend.add_argument("target", metavar="USER[/SERVER]")
    resume = verbs.add_parser(
        "resume", parents=flags, help="start a suspended server on a new host and restore it"
    )
    resume.add_argument("target", metavar="USER[/SERVER]")
    resume.add_argument("--wait", action="store_true", help="wait until it runs")
    cancel = verbs.add_parser(
        "cancel",
        parents=flags,
        help="a server: stop and discard the checkpoint, the next start is fresh (says what "
        "is lost); a job (JOB, job-XXXXXXXX): stop it and remove its server",
        description="USER[/SERVER] cancels a server: it stops and its checkpoint is discarded. "
        "A job id (job- and 8 hex digits, as `submit` and `jobs` show) cancels that headless "
        "job: its named server is stopped and removed. A user whose name looks like a job id "
        "is written with a slash: NAME/ for the default server.",
    )
    cancel.add_argument("target", metavar="USER[/SERVER] | JOB")
    submit = verbs.add_parser(
        "submit",
        parents=flags,
        help="run a notebook of your home headless on a spot host of its own (a named server)",
        description="Run NOTEBOOK (a path relative to your home) as a job on a named server "
        "with a batch profile, cell by cell: it moves with its server at a reclaim and resumes "
        "at the next cell. The output notebook and a log land next to NOTEBOOK "
        "(NAME.JOB.ipynb, NAME.JOB.log); the server stops when it is done.",
    )
    submit.add_argument("notebook", metavar="NOTEBOOK")
    submit.add_argument("--profile", help="the server's profile (default: the batch profile)")
    submit.add_argument(
        "-p",
        "--parameter",
        dest="parameters",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="a parameter, injected after the cell tagged `parameters` (papermill's way: "
        "numbers, True/False/None, else a string)",
    )
    submit.add_argument("--name", help="the job's name (default: the notebook's)")
    submit.add_argument(
        "-k",
        "--kernel",
        help="the kernel to run it on (papermill's -k; default: the notebook's "
        "metadata.kernelspec, else python3)",
    )
    submit.add_argument("--user", help="submit for this user (admins)")
    submit.add_argument(
        "--wait",
        action="store_true",
        help="wait until the job has ended; exit 1 unless it completed",
    )
    jobs = verbs.add_parser(
        "jobs",
        parents=flags,
        help="headless jobs: status, timings, moves, cost (yours; an admin's: all)",
    )
    jobs.add_argument("user", nargs="?", metavar="USER", help="only this user's jobs")
    history = verbs.add_parser(
        "history", parents=flags, help="moves, suspends, resumes and losses of a server"
    )
    history.add_argument("target", metavar="USER[/SERVER]")
    tcp = verbs.add_parser(
        "gateway", parents=flags, help="stable gateway-address:port for TCP ports of servers"
    )
    tcp_verbs = tcp.add_subparsers(dest="gateway_verb", required=True)
    connect = tcp_verbs.add_parser(
        "connect", parents=flags, help="a pool port for a TCP port of your server"
    )
    connect.add_argument("target", metavar="USER[/SERVER]")
    connect.add_argument("--target-port", type=int, required=True, help="the server's port")
    connect.add_argument(
        "--allowed-cidrs",
        metavar="CIDR[,CIDR]",
        help="who may reach the port (networks within the gateway's allowed_cidrs, its "
        "default); connecting a connected port again with it changes them",
    )
    disconnect = tcp_verbs.add_parser("disconnect", parents=flags, help="give a port back")
    disconnect.add_argument("target", metavar="USER[/SERVER]")
    disconnect.add_argument("port", type=int, help="the gateway port")
    tcp_verbs.add_parser("list", parents=flags, help="your gateway ports (an admin's: all)")
    tcp_info = tcp_verbs.add_parser("info", parents=flags, help="a server's gateway ports")
    tcp_info.add_argument("target", metavar="USER[/SERVER]")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        data, text = run(args)
    except CLIError as e:
        print(f"jupyterhub-migrate: {e}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2, default=str) if args.json else text)
    return 0 if succeeded(args, data) else 1


def succeeded(args: argparse.Namespace, data: Any) -> bool:
    """A `submit --wait` whose job failed or was cancelled exits 1, as papermill does for a
    failing cell, so a script can tell."""
    return not (args.verb == "submit" and args.wait and data.get("status") != "completed")


if __name__ == "__main__":
    sys.exit(main())
