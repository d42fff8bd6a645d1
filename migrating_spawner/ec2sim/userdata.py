"""Run an instance's user data (a cloud-config) as the instance would, in a folder that
stands for its `/`.

Supported: `write_files` (path, content, permissions, `encoding: b64`), `runcmd` (strings
or argument lists, run in order) and the `systemctl` verbs a cloud-config uses to start a
service (`enable --now`, `start`: the unit's `ExecStart` runs as a detached process;
`daemon-reload` and `enable` alone do nothing). Absolute paths under `/etc`, `/var`,
`/opt`, `/root` and `/home` in files and commands are mapped into the instance's folder.
What a simulated instance cannot do is skipped and logged: `packages` and install commands
(pip, apt-get, dnf, yum) when `skip_install` (an AMI with the package baked in), and
`iptables` unless `firewall`. With `firewall`, an `iptables` rule for the metadata
service (169.254.169.254, port 80) is run for this instance's own metadata address and
port instead (loopback instances share one network stack: a rule must name its
instance's address), and deleted again when the instance ends (`remove_rules`).
"""

from __future__ import annotations

import base64
import logging
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import yaml

from ..agent.server import descendants

log = logging.getLogger("migrating.ec2sim")

MAPPED = re.compile(r"(?<![\w./-])/(etc|var|opt|root|home)(?=/|\b)")
INSTALL = re.compile(r"^\s*(sudo\s+)?(pip3?|python3?\s+-m\s+pip|apt-get|apt|dnf|yum)\s")
NEVER = re.compile(r"^\s*(sudo\s+)?(iptables|ip6tables)\s")
IPTABLES = re.compile(r"^\s*(sudo\s+)?iptables\s")
#: EC2's metadata service, as user data names it
METADATA_ADDRESS = "169.254.169.254"


class UserDataError(Exception):
    """User data the simulator cannot run."""


def parse_cloud_config(user_data: bytes) -> dict[str, Any]:
    text = user_data.decode()
    if not text.startswith("#cloud-config"):
        raise UserDataError("user data is not a #cloud-config document")
    config = yaml.safe_load(text) or {}
    if not isinstance(config, dict):
        raise UserDataError("the cloud-config is not a mapping")
    return config


def parse_unit(text: str) -> tuple[list[str], dict[str, str]]:
    """ExecStart (as arguments) and Environment= of a systemd unit."""
    cmd: list[str] = []
    env: dict[str, str] = {}
    for line in text.replace("\\\n", " ").splitlines():
        key, _, value = line.strip().partition("=")
        if key == "ExecStart":
            cmd = shlex.split(value)
        elif key == "Environment":
            for item in shlex.split(value):
                name, _, val = item.partition("=")
                env[name] = val
    if not cmd:
        raise UserDataError("unit without ExecStart")
    return cmd, env


class Instance:
    """One simulated instance's processes and its folder standing for `/`."""

    def __init__(
        self,
        root: Path,
        env: dict[str, str],
        skip_install: bool = True,
        firewall: tuple[str, int] | None = None,
    ):
        self.root = root
        self.env = env
        self.skip_install = skip_install
        #: (address, port) of this instance's metadata service: iptables rules for
        #: 169.254.169.254:80 are run for it (None: iptables is skipped)
        self.firewall = firewall
        #: the iptables rules added (argument lists), deleted by `remove_rules`
        self.rules: list[list[str]] = []
        self.processes: list[subprocess.Popen] = []
        self.log_dir = root / "var" / "log" / "ec2sim"

    def path(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def map(self, text: str) -> str:
        return MAPPED.sub(lambda m: f"{self.root}/{m.group(1)}", text)

    def boot(self, user_data: bytes) -> None:
        """Run the cloud-config: files first, then the commands in order."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        config = parse_cloud_config(user_data)
        if config.get("packages"):
            log.info("%s: packages %s skipped", self.root.name, config["packages"])
        for entry in config.get("write_files") or []:
            self.write_file(entry)
        for number, command in enumerate(config.get("runcmd") or []):
            if isinstance(command, list):
                command = shlex.join(str(c) for c in command)
            self.run(str(command), number)

    def write_file(self, entry: dict[str, Any]) -> None:
        target = self.path(entry["path"])
        target.parent.mkdir(parents=True, exist_ok=True)
        content = entry.get("content", "")
        data = (
            base64.b64decode(content)
            if entry.get("encoding") in {"b64", "base64"}
            else self.map(str(content)).encode()
        )
        target.write_bytes(data)
        target.chmod(int(str(entry.get("permissions", "0644")), 8))

    def run(self, command: str, number: int = 0) -> None:
        if self.firewall and IPTABLES.match(command):
            self.add_rule(shlex.split(command))
            return
        if NEVER.match(command) or (self.skip_install and INSTALL.match(command)):
            log.info("%s: skipped %s", self.root.name, command)
            return
        words = shlex.split(command)
        if words and words[0] == "systemctl":
            self.systemctl(words[1:])
            return
        out = self.log_dir / f"runcmd-{number}.log"
        with open(out, "ab") as f:
            done = subprocess.run(
                ["/bin/sh", "-c", self.map(command)],
                env=self.env,
                cwd=self.root,
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=300,
            )
        if done.returncode:
            log.warning("%s: %r exited %d (see %s)", self.root.name, command, done.returncode, out)

    def metadata_rule(self, words: list[str]) -> list[str]:
        """An iptables command for EC2's metadata service made this instance's: its
        address and port; anything else is refused (the machine is shared)."""
        assert self.firewall is not None
        address, port = self.firewall
        words = [w for w in words if w != "sudo"]
        dests = {words[i + 1] for i, w in enumerate(words[:-1]) if w in {"-d", "--destination"}}
        if dests not in ({METADATA_ADDRESS}, {METADATA_ADDRESS + "/32"}):
            raise UserDataError(f"iptables rule not for the metadata service: {shlex.join(words)}")
        mapped = []
        for i, word in enumerate(words):
            if word in {METADATA_ADDRESS, METADATA_ADDRESS + "/32"}:
                word = f"{address}/32"
            elif i and words[i - 1] == "--dport" and word == "80":
                word = str(port)
            mapped.append(word)
        return mapped

    def add_rule(self, words: list[str]) -> None:
        rule = self.metadata_rule(words)
        verb = next((w for w in rule if w in {"-I", "-A", "--insert", "--append"}), None)
        if verb is None:
            raise UserDataError(f"only -I/-A iptables rules are simulated: {shlex.join(rule)}")
        subprocess.run(rule, check=True, capture_output=True, timeout=30)
        self.rules.append(rule)
        log.info("%s: firewall %s", self.root.name, shlex.join(rule))

    def remove_rules(self) -> None:
        """Delete the rules this instance added (the machine outlives it)."""
        while self.rules:
            rule = self.rules.pop()
            at = next(i for i, w in enumerate(rule) if w in {"-I", "-A", "--insert", "--append"})
            rest = rule[at + 2 :]
            if rest and rest[0].isdigit():  # -I CHAIN N: a position, not part of the rule
                rest = rest[1:]
            delete = [*rule[:at], "-D", rule[at + 1], *rest]
            done = subprocess.run(delete, capture_output=True, text=True, timeout=30)
            if done.returncode:
                log.warning("%s: could not delete %s: %s", self.root.name, rule, done.stderr)

    def systemctl(self, args: list[str]) -> None:
        verbs = [a for a in args if not a.startswith("-")]
        if not verbs or verbs[0] in {"daemon-reload"}:
            return
        if verbs[0] == "enable" and "--now" not in args:
            return
        if verbs[0] not in {"enable", "start", "restart"}:
            log.info("%s: systemctl %s ignored", self.root.name, " ".join(args))
            return
        for unit in verbs[1:]:
            name = unit if "." in unit else unit + ".service"
            unit_file = self.path(f"/etc/systemd/system/{name}")
            if not unit_file.exists():
                raise UserDataError(f"no unit {name}")
            cmd, env = parse_unit(unit_file.read_text())
            self.start([self.map(c) for c in cmd], env, name)

    def start(self, cmd: list[str], env: dict[str, str], name: str) -> None:
        with open(self.log_dir / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                cmd,
                env={**self.env, **{k: self.map(v) for k, v in env.items()}},
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        log.info("%s: started %s (pid %d)", self.root.name, name, proc.pid)
        self.processes.append(proc)

    def pids(self) -> list[int]:
        """Every process of this instance: what it started and all their descendants."""
        pids: list[int] = []
        for proc in self.processes:
            if proc.poll() is None:
                pids.append(proc.pid)
                pids += descendants(proc.pid)
        return pids
