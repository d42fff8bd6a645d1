"""A spot storm on simulated EC2: N servers interrupted at once with AWS's 120 s notice.

A real hub (real CHP, jupyterhub-singleuser, ipykernel) on the `ec2` provider in a simulated
region (moto's server plus `jupyterhub-migrate-ec2-sim`, tests/ec2world.py), checkpoints in
S3 on moto, synced homes, the EventBridge -> SQS channel on. N users each start a server on
their own spot instance; one notebook cell per user writes H MB of random bytes into the
home and keeps K MB of random bytes in a kernel variable. Once every home is in a pre-copy
checkpoint, every instance is interrupted at the same moment (the simulator's control API:
metadata armed and the EventBridge warning put, the instance killed at the deadline), while
a client per user polls /user/NAME/api/status every 250 ms through the proxy.

Measured:

- per server, notice -> back: until the control API reports it Running on another host;
- failed requests of the pollers (non-200 answers or exceptions), and how many were made;
- bytes sent to S3 in the window (notice -> the last server back): the "bytes sent" of every
  checkpoint the hub logged in it (homes with the kernels' snapshots, which live in them),
  next to the size of the homes plus kernels: the pre-copy should make it a small fraction;
- whether the last one was back inside the 120 s window, and whether files and variables
  were kept (each user's file hash and kernel variable checked after the storm).

The S3 store's throughput next to the local store (1 GB) is benchmarks/store.py's section.
Writes the section "## EC2 spot storm (simulated region)" of benchmarks/results.md.

    .venv/bin/python benchmarks/ec2_storm.py [--servers 20] [--home-mb 50] [--kernel-mb 50]
    .venv/bin/python benchmarks/ec2_storm.py --quick   # 2 servers of 5 MB, results.md untouched
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import platform
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))

from ec2world import cloud_config, cloud_resources, ec2_config, ec2_world  # noqa: E402
from kernelws import KernelSocket  # noqa: E402
from motoserver import moto_environ  # noqa: E402
from realhub import RealHub  # noqa: E402
from results import replace_section  # noqa: E402

SECTION = "## EC2 spot storm (simulated region)"
NOTICE = 120.0
POLL_EVERY = 0.25

_LOG_TS = re.compile(r"^\[\w (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) ")
_CKPT = re.compile(
    r"checkpoint \S+ of (?P<who>\S+) \((?P<reason>[^)]*)\): (?P<files>\d+) files, "
    r"(?P<read>\d+) bytes read, (?P<sent>\d+) bytes sent"
)

#: what the storm's hub adds to the region's configs (tests/ec2world.py)
STORM_CONFIG = """
c.MigratingController.max_concurrent_moves = {servers}
c.JupyterHub.concurrent_spawn_limit = 0
c.Spawner.start_timeout = 300
c.Spawner.http_timeout = 240
"""

WRITE_CELL = """
import hashlib, os
data = os.urandom({home} * 1024 * 1024)
with open("storm.bin", "wb") as f:
    f.write(data)
blob = os.urandom({kernel} * 1024 * 1024)
print(hashlib.sha256(data).hexdigest(), hashlib.sha256(blob).hexdigest())
del data  # the kernel keeps only `blob`
"""

CHECK_CELL = """
import hashlib
print(hashlib.sha256(open("storm.bin", "rb").read()).hexdigest(), hashlib.sha256(blob).hexdigest())
"""


@dataclass
class User:
    name: str
    token: str = ""
    kernel_id: str = ""
    host_id: str = ""
    instance_id: str = ""
    hashes: str = ""
    back: float | None = None  # seconds from the notice
    kept: bool | None = None
    check: str = ""  # what the check cell printed after the storm
    requests: int = 0
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)


def log_time(line: str) -> float | None:
    m = _LOG_TS.match(line)
    if m is None:
        return None
    stamp = dt.datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S.%f")
    return stamp.timestamp()  # the hub logs local time, as datetime.strptime reads it


def sent_between(log: str, start: float, end: float) -> tuple[int, int]:
    """(bytes sent, checkpoints) of the checkpoints the hub logged in [start, end]."""
    total = count = 0
    for line in log.splitlines():
        m = _CKPT.search(line)
        when = log_time(line) if m else None
        if m and when is not None and start - 0.5 <= when <= end + 0.5:
            total += int(m["sent"])
            count += 1
    return total, count


async def poll(hub: RealHub, user: User, stop: asyncio.Event) -> None:
    headers = {"Authorization": f"token {user.token}"}
    url = f"{hub.url}/user/{user.name}/api/status"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(30)) as session:
        while not stop.is_set():
            user.requests += 1
            try:
                async with session.get(url, headers=headers, allow_redirects=False) as r:
                    await r.read()
                    if r.status != 200:
                        user.failed += 1
                        user.failures[str(r.status)] = user.failures.get(str(r.status), 0) + 1
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                user.failed += 1
                name = type(e).__name__
                user.failures[name] = user.failures.get(name, 0) + 1
            await asyncio.sleep(POLL_EVERY)


async def prepare(
    hub: RealHub, user: User, home_mb: int, kernel_mb: int, one_kernel_at_a_time: asyncio.Lock
) -> None:
    await hub.spawn(user.name)
    user.token = await hub.user_token(user.name)
    info = await hub.server_info(user.name)
    user.host_id = info["host_id"]
    # the simulated instances share this machine's 127.0.0.1, where every kernel binds:
    # kernels started at the same moment by different servers can pick the same free port
    # (jupyter_client's race; separate EC2 instances do not share one), so the setup
    # starts them one after another; the storm's moves start them all at once
    async with one_kernel_at_a_time:
        session = await hub.new_session(user.name, user.token, "storm.ipynb")
        user.kernel_id = session["kernel"]["id"]
        base = f"{hub.url}/user/{user.name}"
        async with KernelSocket(base, user.kernel_id, user.token) as kernel:
            await kernel.run("pass", timeout=120)
    async with KernelSocket(base, user.kernel_id, user.token) as kernel:
        out, _ = await kernel.run(WRITE_CELL.format(home=home_mb, kernel=kernel_mb), timeout=300)
    user.hashes = out.strip()


async def precopied(
    hub: RealHub, users: list[User], megabytes: int, since: float, timeout: float
) -> None:
    """Until the pre-copy checkpoints of each user since `since` (before the cells ran) sent
    at least `megabytes`: its home file and its kernel's snapshot (taken every
    `kernel_snapshot_interval` by the server, and then in the next pre-copy), as on a server
    that has run a while before its notice."""
    deadline = time.monotonic() + timeout
    want = 0.95 * megabytes * 1024 * 1024  # a little less: a few bytes compress away
    while True:
        sent: dict[str, int] = {}
        for line in hub.log_path.read_text(errors="replace").splitlines():
            m = _CKPT.search(line)
            when = log_time(line) if m else None
            if m and when and when >= since and m["reason"] == "pre-copy":
                sent[m["who"]] = sent.get(m["who"], 0) + int(m["sent"])
        if all(sent.get(u.name, 0) >= want for u in users):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"pre-copies since the cells: {sent} bytes sent, not {want:.0f}")
        await asyncio.sleep(1)


async def storm(servers: int, home_mb: int, kernel_mb: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="ec2-storm-") as tmp:
        root = Path(tmp)
        with ec2_world(root / "region") as world, moto_environ(world.moto):
            bucket, queue = cloud_resources(world.moto, "storm")
            config = (
                ec2_config(world, hub_name="storm-hub", boot_timeout=240, watch_interval=2)
                + cloud_config(
                    world.moto.endpoint_url, bucket, queue, wait_seconds=5, precopy_interval=10
                )
                + STORM_CONFIG.format(servers=servers)
            )
            (root / "hub").mkdir()
            hub = RealHub(root / "hub", config)
            hub.start()
            try:
                await hub.wait_up()
                return await run_storm(hub, world, servers, home_mb, kernel_mb)
            except BaseException:
                print(hub.tail(120))
                print(world.log())
                raise
            finally:
                hub.stop()
                hub.kill_proxy()


async def run_storm(hub: RealHub, world, servers: int, home_mb: int, kernel_mb: int) -> dict:
    users = [User(f"storm{n:02d}") for n in range(servers)]
    t0 = time.monotonic()
    since = time.time()
    lock = asyncio.Lock()
    await asyncio.gather(*(prepare(hub, u, home_mb, kernel_mb, lock) for u in users))
    spawned = time.monotonic() - t0
    await precopied(hub, users, home_mb + kernel_mb, since, timeout=600)
    instances = world.ec2.describe_instances()["Reservations"]
    by_host = {
        t["Value"]: i["InstanceId"]
        for r in instances
        for i in r["Instances"]
        for t in i.get("Tags", [])
        if t["Key"] == "jupyterhub-migrating:host-id"
    }
    for u in users:
        u.instance_id = by_host[u.host_id]

    stop = asyncio.Event()
    pollers = [asyncio.create_task(poll(hub, u, stop)) for u in users]
    await asyncio.sleep(2)  # every poller has answers from the old servers
    control = world.info["control_url"]
    async with aiohttp.ClientSession() as session:

        async def interrupt(u: User) -> None:
            body = {"instance_id": u.instance_id, "notice": NOTICE}
            async with session.post(control + "/interrupt", json=body) as r:
                assert r.status == 200, await r.text()

        notice_at = time.time()
        started = time.monotonic()
        await asyncio.gather(*(interrupt(u) for u in users))
    while any(u.back is None for u in users):
        for u in users:
            if u.back is None:
                info = await hub.server_info(u.name)
                if info["host_id"] != u.host_id and info["state"] == "Running":
                    u.back = time.monotonic() - started
        if time.monotonic() - started > NOTICE + 120:
            break
        await asyncio.sleep(0.5)
    last_back = time.time()
    await asyncio.sleep(2)
    stop.set()
    await asyncio.gather(*pollers)
    for u in users:
        if u.back is None:
            continue
        async with KernelSocket(f"{hub.url}/user/{u.name}", u.kernel_id, u.token) as kernel:
            out, _ = await kernel.run(CHECK_CELL, timeout=120)
        u.check = out.strip()
        # the last line: a moved kernel may say so in the output before it
        u.kept = bool(u.check) and u.check.splitlines()[-1] == u.hashes
    log = hub.log_path.read_text(errors="replace")
    sent, checkpoints = sent_between(log, notice_at, last_back)
    for line in log.splitlines():  # what the window's checkpoints were, for the record
        when = log_time(line)
        if _CKPT.search(line) and when is not None and notice_at - 0.5 <= when <= last_back + 0.5:
            print(line[line.find("checkpoint ") :])
    return {
        "users": users,
        "spawned": spawned,
        "sent": sent,
        "checkpoints": checkpoints,
        "size": servers * (home_mb + kernel_mb) * 1024 * 1024,
    }


def table(result: dict, servers: int, home_mb: int, kernel_mb: int) -> str:
    users = result["users"]
    backs = sorted(u.back for u in users if u.back is not None)
    requests = sum(u.requests for u in users)
    failed = sum(u.failed for u in users)
    failures: dict[str, int] = {}
    for u in users:
        for k, v in u.failures.items():
            failures[k] = failures.get(k, 0) + v
    median = backs[len(backs) // 2] if backs else None
    sent, size = result["sent"], result["size"]
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        SECTION,
        "",
        f"`benchmarks/ec2_storm.py --servers {servers} --home-mb {home_mb} --kernel-mb "
        f"{kernel_mb}`, {now}, {platform.machine()}, 2 cores shared with other work, Python "
        f"{platform.python_version()}. Real hub, CHP, jupyterhub-singleuser and ipykernel on "
        "simulated spot instances (moto's server plus the machine simulator on loopback), "
        "checkpoints in S3 on moto, synced homes, notices through metadata and EventBridge -> "
        f"SQS. All {servers} instances interrupted at the same moment with a "
        f"{NOTICE:g} s notice; each user's client polls /api/status every "
        f"{POLL_EVERY * 1000:g} ms through the proxy. Starting the {servers} servers took "
        f"{result['spawned']:.0f} s.",
        "",
        "| servers | home + kernel each | back: first / median / last | inside the "
        f"{NOTICE:g} s window | failed requests | sent to S3 in the window | of the homes "
        "+ kernels | files and variables kept |",
        "|---|---|---|---|---|---|---|---|",
        f"| {servers} ({len(backs)} back) | {home_mb} MB + {kernel_mb} MB | "
        + (f"{backs[0]:.1f} / {median:.1f} / {backs[-1]:.1f} s" if backs else "none came back")
        + f" | {'yes' if backs and len(backs) == servers and backs[-1] < NOTICE else 'NO'} | "
        f"{failed} of {requests}"
        + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(failures.items()))})" if failed else "")
        + f" | {sent / 1e6:.1f} MB in {result['checkpoints']} checkpoints | "
        f"{100 * sent / size:.1f} % of {size / 1e6:.0f} MB | "
        f"{sum(1 for u in users if u.kept)} of {servers} |",
        "",
        "The window is the notice to the last server reported Running on its new instance; "
        "the checkpoints in it are each move's pre-copy and final checkpoint (the kernels' "
        "snapshots land in the homes), listed by the script as it runs.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--servers", type=int, default=20)
    parser.add_argument("--home-mb", type=int, default=50)
    parser.add_argument("--kernel-mb", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="2 servers of 5 MB; no results.md")
    args = parser.parse_args()
    if args.quick:
        args.servers, args.home_mb, args.kernel_mb = 2, 5, 5
    result = asyncio.run(storm(args.servers, args.home_mb, args.kernel_mb))
    text = table(result, args.servers, args.home_mb, args.kernel_mb)
    print(text)
    for u in result["users"]:
        print(u.name, u.back, u.kept, u.failed, u.failures, repr(u.check[-300:]))
    if not args.quick:
        replace_section(text)


if __name__ == "__main__":
    main()
