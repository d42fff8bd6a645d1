"""The simulated machines of a moto region: boots, interruptions, rebalances, capacity.

Every `poll_interval` the simulator asks moto for its instances. A new one that is pending
or running gets the next free loopback address 127.0.0.N (from `first_address`), a
metadata service on that address (`imds_port`) and its user data run (userdata.py) in a
folder of its own standing for its `/` (its disk). An instance moto reports terminated or
stopped (the hub released it) loses its processes and its disk.

`interrupt(id, notice)` arms the instance's `spot/instance-action`, puts EventBridge's
"EC2 Spot Instance Interruption Warning" on the default bus (`channels` may name one of
the two alone: metadata blocked, or no EventBridge rule), and at the deadline kills the
instance's processes, wipes its disk, terminates it in moto and puts the "EC2 Instance
State-change Notification". `rebalance(id)` arms `events/recommendations/rebalance` and
puts "EC2 Instance Rebalance Recommendation". `capacity_error(type)` makes the next fleets
for that type fail (ec2proxy.py).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from aiohttp import web
from botocore.config import Config

from .ec2proxy import CapacityErrors, EC2Proxy
from .metadata import MetadataService
from .userdata import Instance, UserDataError

log = logging.getLogger("migrating.ec2sim")

#: how an interruption is told: the instance's metadata notice, the EventBridge event
CHANNELS = ("metadata", "eventbridge")
GONE_STATES = {"shutting-down", "terminated", "stopping", "stopped"}


@dataclass
class SimInstance:
    id: str
    address: str
    metadata: MetadataService
    machine: Instance
    runner: web.AppRunner | None = None
    deadline: float | None = None
    state: str = "running"
    booted: float = field(default_factory=time.time)
    boot_error: str = ""


class Simulator:
    def __init__(
        self,
        moto_url: str,
        root: Path,
        first_address: str = "127.0.0.100",
        imds_port: int = 8169,
        skip_install: bool = True,
        region: str = "us-east-1",
        poll_interval: float = 0.5,
        boot_delay: float = 40.0,
        machines_dir: Path | None = None,
        firewall: bool = False,
    ):
        self.moto_url = moto_url
        self.root = root
        self.first_address = ipaddress.ip_address(first_address)
        self.imds_port = imds_port
        self.skip_install = skip_install
        self.region = region
        self.poll_interval = poll_interval
        #: where the instances' folders (their `/`) are: `root/instances` unless given (a
        #: folder other users may traverse, for servers run as unprivileged users)
        self.machines_dir = machines_dir or root / "instances"
        #: run the user data's iptables rules for the metadata service (userdata.py)
        self.firewall = firewall
        # launch -> user data runs, as an instance boots; instances boot side by side
        self.boot_delay = boot_delay
        self._booting: set[str] = set()
        self.instances: dict[str, SimInstance] = {}
        self.errors = CapacityErrors()
        self.proxy = EC2Proxy(moto_url, self.errors)
        self._tasks: set[asyncio.Task] = set()
        kwargs = {
            "endpoint_url": moto_url,
            "region_name": region,
            "config": Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30),
        }
        self.ec2 = boto3.client("ec2", **kwargs)
        self.events = boto3.client("events", **kwargs)

    # -- the machines ---------------------------------------------------------------

    def _free_address(self) -> str:
        used = {i.address for i in self.instances.values() if i.state != "terminated"}
        for offset in range(250):
            address = str(self.first_address + offset)
            if address not in used:
                return address
        raise RuntimeError("no loopback address left for another instance")

    def instance_env(self, address: str, root: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("AWS_ENDPOINT_URL_EC2", None)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
        # where boto3 and our agent find the metadata service (169.254.169.254 on EC2)
        env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = f"http://{address}:{self.imds_port}/"
        env.pop("AWS_EC2_METADATA_DISABLED", None)
        env["HOME"] = str(root / "root")
        return env

    async def poll(self) -> None:
        described = await asyncio.to_thread(self.ec2.describe_instances)
        seen = {}
        for reservation in described["Reservations"]:
            for item in reservation["Instances"]:
                seen[item["InstanceId"]] = item
        for iid, item in seen.items():
            state = item["State"]["Name"]
            inst = self.instances.get(iid)
            if inst is None and state in {"pending", "running"} and iid not in self._booting:
                self._booting.add(iid)
                task = asyncio.ensure_future(self._boot_later(item))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif inst is not None and state in GONE_STATES and inst.state != "terminated":
                log.info("%s is %s in moto: its machine goes", iid, state)
                await self.end(inst)

    async def _boot_later(self, item: dict[str, Any]) -> None:
        try:
            if self.boot_delay > 0:
                await asyncio.sleep(self.boot_delay)
                found = await asyncio.to_thread(
                    self.ec2.describe_instances, InstanceIds=[item["InstanceId"]]
                )
                now = found["Reservations"][0]["Instances"][0]
                if now["State"]["Name"] in GONE_STATES:
                    return  # terminated while it booted
                item = now
            await self.boot(item)
        except Exception:
            log.exception("%s could not boot", item["InstanceId"])
        finally:
            self._booting.discard(item["InstanceId"])

    async def boot(self, item: dict[str, Any]) -> None:
        iid = item["InstanceId"]
        attr = await asyncio.to_thread(
            self.ec2.describe_instance_attribute, InstanceId=iid, Attribute="userData"
        )
        # no await from here until the instance is recorded: boots run side by side, and
        # each must see the addresses the others took
        address = self._free_address()
        root = self.machines_dir / iid
        root.mkdir(parents=True, exist_ok=True)
        encoded = (attr.get("UserData") or {}).get("Value") or ""
        user_data = base64.b64decode(encoded) if encoded else b""
        metadata = MetadataService(item, address, user_data)
        machine = Instance(
            root,
            self.instance_env(address, root),
            self.skip_install,
            (address, self.imds_port) if self.firewall else None,
        )
        inst = self.instances[iid] = SimInstance(iid, address, metadata, machine)
        inst.runner = web.AppRunner(metadata.app(), access_log=None)
        await inst.runner.setup()
        await web.TCPSite(inst.runner, address, self.imds_port).start()
        log.info("%s (%s) booted at %s", iid, item.get("InstanceType"), address)
        if user_data:
            try:
                await asyncio.to_thread(machine.boot, user_data)
            except (UserDataError, OSError, ValueError) as e:
                inst.boot_error = str(e)
                log.error("%s: user data failed: %s", iid, e)

    async def end(self, inst: SimInstance) -> None:
        """What a terminated instance goes through: processes killed, disk gone."""
        inst.state = "terminated"
        for pid in inst.machine.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in inst.machine.processes:
            try:
                await asyncio.to_thread(proc.wait, 5)
            except Exception:  # noqa: BLE001 (a zombie we cannot reap is harmless here)
                pass
        if inst.runner is not None:
            await inst.runner.cleanup()
        await asyncio.to_thread(inst.machine.remove_rules)
        shutil.rmtree(inst.machine.root, ignore_errors=True)

    # -- what happens to them -------------------------------------------------------

    def _arn(self, iid: str) -> str:
        return f"arn:aws:ec2:{self.region}:123456789012:instance/{iid}"

    async def _event(self, detail_type: str, detail: dict[str, Any], iid: str) -> None:
        entry = {
            "Source": "aws.ec2",
            "DetailType": detail_type,
            "Detail": json.dumps(detail),
            "Resources": [self._arn(iid)],
        }
        await asyncio.to_thread(self.events.put_events, Entries=[entry])

    def _get(self, iid: str) -> SimInstance:
        inst = self.instances.get(iid)
        if inst is None or inst.state == "terminated":
            raise KeyError(f"no running instance {iid}")
        return inst

    async def interrupt(
        self, iid: str, notice: float, channels: Iterable[str] = CHANNELS
    ) -> dict[str, Any]:
        """A spot interruption told through `channels` (both by default; one alone stands
        for the other being blocked or not routed): the metadata notice and/or the
        EventBridge warning. The end at the deadline is the same either way."""
        channels = set(channels)
        if not channels or channels - set(CHANNELS):
            raise ValueError(f"channels must be some of {', '.join(CHANNELS)}")
        inst = self._get(iid)
        deadline = time.time() + notice
        if inst.deadline is not None and inst.deadline <= deadline:
            return {"instance_id": iid, "deadline": inst.deadline}
        inst.deadline = deadline
        if "metadata" in channels:
            inst.metadata.arm_interruption(deadline)
        if "eventbridge" in channels:
            await self._event(
                "EC2 Spot Instance Interruption Warning",
                {"instance-id": iid, "instance-action": "terminate"},
                iid,
            )
        task = asyncio.create_task(self._reclaim_at(inst, deadline))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.warning("%s will be interrupted in %.0f s (told: %s)", iid, notice, sorted(channels))
        return {
            "instance_id": iid,
            "deadline": deadline,
            "address": inst.address,
            "channels": sorted(channels),
        }

    async def _reclaim_at(self, inst: SimInstance, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - time.time()))
        if inst.state == "terminated" or inst.deadline != deadline:
            return
        log.warning("%s reclaimed: processes killed, disk wiped, terminated", inst.id)
        await self.end(inst)
        await asyncio.to_thread(self.ec2.terminate_instances, InstanceIds=[inst.id])
        await self._event(
            "EC2 Instance State-change Notification",
            {"instance-id": inst.id, "state": "terminated"},
            inst.id,
        )

    async def rebalance(self, iid: str) -> dict[str, Any]:
        inst = self._get(iid)
        inst.metadata.arm_rebalance()
        await self._event("EC2 Instance Rebalance Recommendation", {"instance-id": iid}, iid)
        return {"instance_id": iid, "rebalance": inst.metadata.rebalance}

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "instance_id": i.id,
                "address": i.address,
                "state": i.state,
                "deadline": i.deadline,
                "rebalance": i.metadata.rebalance is not None,
                "metadata_hits": dict(i.metadata.hits),
                "boot_error": i.boot_error,
                "root": str(i.machine.root),
            }
            for i in self.instances.values()
        ]

    # -- control API ----------------------------------------------------------------

    def control_app(self) -> web.Application:
        app = web.Application()
        app.add_routes(
            [
                web.get("/instances", self.h_instances),
                web.post("/interrupt", self.h_interrupt),
                web.post("/rebalance", self.h_rebalance),
                web.post("/capacity-error", self.h_capacity),
            ]
        )
        return app

    async def h_instances(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"instances": self.describe(), "capacity_errors": self.errors.types}
        )

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="body must be JSON") from None
        return body if isinstance(body, dict) else {}

    async def h_interrupt(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        try:
            notice = float(body.get("notice", 120))
        except (TypeError, ValueError):
            return web.json_response({"message": "notice must be a number"}, status=400)
        channels = body.get("channels") or CHANNELS
        try:
            return web.json_response(
                await self.interrupt(str(body.get("instance_id")), notice, channels)
            )
        except KeyError as e:
            return web.json_response({"message": e.args[0]}, status=404)
        except (TypeError, ValueError) as e:
            return web.json_response({"message": str(e)}, status=400)

    async def h_rebalance(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        try:
            return web.json_response(await self.rebalance(str(body.get("instance_id"))))
        except KeyError as e:
            return web.json_response({"message": e.args[0]}, status=404)

    async def h_capacity(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        itype = str(body.get("instance_type", ""))
        if not itype:
            return web.json_response({"message": "instance_type is required"}, status=400)
        if body.get("clear"):
            self.errors.clear(itype)
        else:
            market = str(body.get("market", "spot"))
            if market not in {"spot", "on-demand", "any"}:
                return web.json_response({"message": "market: spot|on-demand|any"}, status=400)
            self.errors.set(itype, market)
        return web.json_response({"capacity_errors": self.errors.types})

    # -- running --------------------------------------------------------------------

    async def serve(self, control_port: int = 0, ec2_port: int = 0) -> None:
        """Serve the control API and the EC2 endpoint on 127.0.0.1, write `sim.json`
        (where they are) into the root folder, and simulate until SIGTERM/SIGINT."""
        self.root.mkdir(parents=True, exist_ok=True)
        runners = []
        urls = {}
        for name, app, port in (
            ("control_url", self.control_app(), control_port),
            ("ec2_url", self.proxy.app(), ec2_port),
        ):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", port)
            await site.start()
            bound = runner.addresses[0][1]
            urls[name] = f"http://127.0.0.1:{bound}"
            runners.append(runner)
        info = {**urls, "moto_url": self.moto_url, "pid": os.getpid(), "region": self.region}
        tmp = self.root / "sim.json.tmp"
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self.root / "sim.json")
        log.info("simulator up: %s", info)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            while not stop.is_set():
                try:
                    await self.poll()
                except Exception as e:  # noqa: BLE001 (moto restarting: try again)
                    log.warning("poll failed: %r", e)
                try:
                    await asyncio.wait_for(stop.wait(), self.poll_interval)
                except asyncio.TimeoutError:
                    pass
        finally:
            for inst in list(self.instances.values()):
                if inst.state != "terminated":
                    await self.end(inst)
            for runner in runners:
                await runner.cleanup()
            (self.root / "sim.json").unlink(missing_ok=True)
