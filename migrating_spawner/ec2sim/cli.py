"""`jupyterhub-migrate-ec2-sim`: the machine simulator of a moto region.

    jupyterhub-migrate-ec2-sim run --moto-url http://127.0.0.1:5000 [--state-dir D]
    jupyterhub-migrate-ec2-sim interrupt INSTANCE_ID [--notice SECONDS] [--only CHANNEL]
    jupyterhub-migrate-ec2-sim rebalance INSTANCE_ID
    jupyterhub-migrate-ec2-sim capacity-error TYPE [--market spot|on-demand|any] [--clear]
    jupyterhub-migrate-ec2-sim list

`run` writes `sim.json` into its state folder (default `ec2sim/`, or
`$JUPYTERHUB_MIGRATE_EC2SIM_DIR`): the other verbs find the running simulator there. The
hub's EC2 provider uses the `ec2_url` written there as its endpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .simulator import Simulator


def state_dir(given: str) -> Path:
    return Path(given or os.environ.get("JUPYTERHUB_MIGRATE_EC2SIM_DIR") or "ec2sim").absolute()


def notice_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError("give a finite number of seconds >= 0")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jupyterhub-migrate-ec2-sim", description=__doc__.split("\n")[0]
    )
    p.add_argument("--state-dir", default="", help="the simulator's folder (sim.json, instances)")
    sub = p.add_subparsers(dest="verb", required=True)
    run = sub.add_parser("run", help="simulate the instances of a moto server")
    run.add_argument("--moto-url", required=True, help="moto server's URL")
    run.add_argument("--region", default="us-east-1")
    run.add_argument("--first-address", default="127.0.0.100", help="first instance address")
    run.add_argument("--imds-port", type=int, default=8169, help="metadata port on each address")
    run.add_argument("--control-port", type=int, default=0, help="control API port (0: any)")
    run.add_argument("--ec2-port", type=int, default=0, help="EC2 endpoint port (0: any)")
    run.add_argument(
        "--run-install-steps",
        action="store_true",
        help="run the user data's install steps (pip, apt-get, packages) too; by default "
        "they are skipped, as on an AMI with the package baked in",
    )
    run.add_argument(
        "--boot-delay",
        type=notice_seconds,
        default=40.0,
        help="seconds from launch to an instance's user data running, as a spot instance "
        "boots (AWS: ~40 s; 0 for tests)",
    )
    run.add_argument(
        "--machines-dir",
        default="",
        help="folder of the instances' folders (default: STATE_DIR/instances); servers run "
        "as unprivileged users need every folder above it to let others through",
    )
    run.add_argument(
        "--firewall",
        action="store_true",
        help="run the user data's iptables rules for the metadata service, for each "
        "instance's own metadata address (needs root and iptables; deleted at its end)",
    )
    run.add_argument("--log-level", default="INFO")
    i = sub.add_parser("interrupt", help="spot interruption: notice now, terminate at deadline")
    i.add_argument("instance_id")
    i.add_argument("--notice", type=notice_seconds, default=120.0, help="seconds (AWS: 120)")
    i.add_argument(
        "--only",
        choices=["metadata", "eventbridge"],
        help="tell it through this channel alone (metadata blocked, or no EventBridge rule); "
        "default: both, as on EC2",
    )
    r = sub.add_parser("rebalance", help="a rebalance recommendation for an instance")
    r.add_argument("instance_id")
    c = sub.add_parser("capacity-error", help="the next fleets for TYPE fail for lack of capacity")
    c.add_argument("instance_type")
    c.add_argument("--market", default="spot", choices=["spot", "on-demand", "any"])
    c.add_argument("--clear", action="store_true", help="capacity is back")
    sub.add_parser("list", help="the simulated instances")
    return p


def call(root: Path, method: str, path: str, body: dict | None = None) -> dict:
    try:
        info = json.loads((root / "sim.json").read_text())
    except FileNotFoundError:
        sys.exit(f"no simulator running for {root} (start: jupyterhub-migrate-ec2-sim run)")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        info["control_url"] + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("message", "")
        except ValueError:
            message = e.reason
        sys.exit(f"{path.strip('/')}: {message}")
    except urllib.error.URLError as e:
        sys.exit(f"cannot reach the simulator at {info['control_url']}: {e.reason}")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    root = state_dir(args.state_dir)
    if args.verb == "run":
        logging.basicConfig(
            level=args.log_level,
            format="[%(levelname)1.1s %(asctime)s ec2sim] %(message)s",
            stream=sys.stderr,
        )
        logging.getLogger("botocore").setLevel(logging.WARNING)
        sim = Simulator(
            args.moto_url,
            root,
            first_address=args.first_address,
            imds_port=args.imds_port,
            skip_install=not args.run_install_steps,
            region=args.region,
            boot_delay=args.boot_delay,
            machines_dir=Path(args.machines_dir) if args.machines_dir else None,
            firewall=args.firewall,
        )
        asyncio.run(sim.serve(args.control_port, args.ec2_port))
        return
    if args.verb == "interrupt":
        body = {"instance_id": args.instance_id, "notice": args.notice}
        if args.only:
            body["channels"] = [args.only]
        out = call(root, "POST", "/interrupt", body)
    elif args.verb == "rebalance":
        out = call(root, "POST", "/rebalance", {"instance_id": args.instance_id})
    elif args.verb == "capacity-error":
        out = call(
            root,
            "POST",
            "/capacity-error",
            {"instance_type": args.instance_type, "market": args.market, "clear": args.clear},
        )
    else:
        out = call(root, "GET", "/instances")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
