"""Headless jobs' records: what `jupyterhub-migrate submit` started, and what became of it.

Pure: the record (`JobRecord`), its status words, the JSON-lines file the hub keeps them in
(`JobStore`, beside the hub's database like the servers' history, so jobs outlive a hub
restart), papermill's parameter values, the output and log names next to the input, and the
log's text. No hub, no HTTP.
"""

from __future__ import annotations

import ast
import json
import os
import posixpath
import re
import secrets
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

#: a job's status, as `jobs` lists it
QUEUED, RUNNING, MOVING = "queued", "running", "moving"
COMPLETED, FAILED, CANCELLED = "completed", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, MOVING, COMPLETED, FAILED, CANCELLED)
FINISHED = frozenset({COMPLETED, FAILED, CANCELLED})

#: a job id, which is also the name of the job's JupyterHub named server; the CLI tells a
#: job from a server (`cancel JOB` and `cancel USER[/SERVER]`) by this form
JOB_ID = re.compile(r"^job-[0-9a-f]{8}$")


def new_job_id() -> str:
    return "job-" + secrets.token_hex(4)


def is_job_id(text: str) -> bool:
    return bool(JOB_ID.match(text))


def status_from_scheduler(status: str, moving: bool) -> str:
    """Our word for a jupyter-scheduler job status (CREATED, QUEUED, IN_PROGRESS,
    COMPLETED, FAILED, STOPPING, STOPPED) while its server is, or is not, moving."""
    status = status.upper()
    if status == "COMPLETED":
        return COMPLETED
    if status == "FAILED":
        return FAILED
    if status in ("STOPPED", "STOPPING"):
        return CANCELLED
    if moving:
        return MOVING
    return RUNNING if status == "IN_PROGRESS" else QUEUED


def resolve_value(text: str) -> Any:
    """A `-p name value` value the way papermill's CLI reads it: True/False/None, an int,
    a float, else the string itself."""
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parameter_source(value: Any) -> str:
    """A parameter as the Python source jupyter-scheduler injects (`name = <source>`)."""
    if isinstance(value, str):
        return repr(value)
    text = repr(value)
    ast.literal_eval(text)  # only literals: JSON numbers, booleans, null, lists, dicts
    return text


def check_parameters(parameters: Any) -> dict[str, Any]:
    """`parameters` as a dict of Python names to literal values (ValueError naming the bad
    one). Strings are kept as strings: the CLI resolves `-p` values before sending them."""
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise ValueError("parameters must be a JSON object of name: value")
    for name, value in parameters.items():
        if not (isinstance(name, str) and name.isidentifier()):
            raise ValueError(f"parameter name {name!r} is not a Python identifier")
        try:
            parameter_source(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"parameter {name}: {value!r} is not a literal value") from None
    return dict(parameters)


def check_notebook_path(path: Any) -> str:
    """A notebook path relative to the user's home, normalised (ValueError otherwise)."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError("notebook must be a path relative to your home (e.g. work/run.ipynb)")
    norm = posixpath.normpath(path.strip())
    if norm.startswith("/") or norm == "." or norm.split("/")[0] == "..":
        raise ValueError(f"notebook {path!r} must be a path inside your home, relative to it")
    if not norm.endswith(".ipynb"):
        raise ValueError(f"notebook {path!r} is not a .ipynb file")
    return norm


def has_parameters_cell(notebook: dict[str, Any]) -> bool:
    return any(
        "parameters" in (cell.get("metadata", {}).get("tags") or [])
        for cell in notebook.get("cells", [])
    )


def output_paths(notebook: str, job_id: str) -> tuple[str, str]:
    """The output notebook and the log, next to the input: `run.ipynb` gives
    `run.job-1a2b3c4d.ipynb` and `run.job-1a2b3c4d.log`."""
    stem = notebook[: -len(".ipynb")]
    return f"{stem}.{job_id}.ipynb", f"{stem}.{job_id}.log"


@dataclass
class JobRecord:
    """One headless job. `server` is the JupyterHub named server it runs on (its id)."""

    id: str
    user: str
    notebook: str
    profile: str
    name: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    #: the kernel it runs on (submit's, else the notebook's, else JobRunner.default_kernel)
    kernel: str = ""
    by: str = ""
    status: str = QUEUED
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    message: str = ""
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    moves: int = 0
    hosts: list[str] = field(default_factory=list)
    host_seconds: float = 0.0
    cost: float | None = None
    accounted_until: float | None = None
    scheduler_job_id: str | None = None
    output: str | None = None
    log: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def server(self) -> str:
        return self.id

    @property
    def finished_ok(self) -> bool:
        return self.status in FINISHED

    def note(self, message: str, now: float | None = None) -> None:
        self.events.append({"time": now or time.time(), "message": message})
        self.message = message

    def account(self, hourly_price: float | None, on_host: bool, now: float | None = None) -> None:
        """Add the time since the last look to the host time (and the cost, at
        `hourly_price` per hour, where the price is known)."""
        now = now or time.time()
        if self.accounted_until is not None and on_host:
            dt = max(0.0, now - self.accounted_until)
            self.host_seconds += dt
            if hourly_price is not None:
                self.cost = (self.cost or 0.0) + hourly_price * dt / 3600
        self.accounted_until = now

    def public(self, now: float | None = None) -> dict[str, Any]:
        """What GET jobs and GET jobs/ID answer."""
        now = now or time.time()
        end = self.finished or now
        return {
            "id": self.id,
            "user": self.user,
            "name": self.name,
            "notebook": self.notebook,
            "profile": self.profile,
            "parameters": self.parameters,
            "kernel": self.kernel,
            "server": self.server,
            "status": self.status,
            "submitted": self.submitted,
            "started": self.started,
            "finished": self.finished,
            "duration": end - self.started if self.started else None,
            "moves": self.moves,
            "hosts": self.hosts,
            "host_seconds": round(self.host_seconds, 1),
            "cost": round(self.cost, 6) if self.cost is not None else None,
            "message": self.message,
            "error": self.error,
            "warnings": self.warnings,
            "output": self.output,
            "log": self.log,
            "events": self.events[-50:],
            "actions": [] if self.finished_ok else ["cancel"],
        }

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def render_log(record: JobRecord, status: str | None = None) -> str:
    """The job's log file: one line per event, UTC (`status`: the one it is ending with)."""
    lines = [
        f"job {record.id} ({record.name or record.notebook}) of {record.user}: {record.notebook}",
        f"profile {record.profile}; kernel {record.kernel or '-'}; "
        f"parameters {json.dumps(record.parameters)}",
    ]
    for event in record.events:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(event["time"]))
        lines.append(f"{stamp}  {event['message']}")
    for warning in record.warnings:
        lines.append(f"warning: {warning}")
    if record.error:
        lines.append(f"error: {record.error}")
    cost = f", cost {record.cost:.6f}" if record.cost is not None else ""
    hosts = ", ".join(record.hosts) or "-"
    lines.append(
        f"status {status or record.status}; {record.moves} move(s); hosts {hosts}; "
        f"{record.host_seconds:.0f} s on hosts{cost}"
    )
    return "\n".join(lines) + "\n"


class JobStore:
    """Job records as JSON lines in one file: each change appends the whole record, the last
    line of an id wins. `compact()` rewrites the file with one line per job."""

    def __init__(self, folder: Path, max_jobs: int = 10000):
        self.folder = Path(folder)
        self.path = self.folder / "jobs.jsonl"
        self.max_jobs = max_jobs
        self.jobs: dict[str, JobRecord] = {}
        self._lines = 0

    def load(self) -> dict[str, JobRecord]:
        self.jobs = {}
        self._lines = 0
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return self.jobs
        for line in text.splitlines():
            try:
                record = JobRecord.from_json(json.loads(line))
            except (ValueError, TypeError):
                continue  # a line cut short by a crash
            self.jobs.pop(record.id, None)
            self.jobs[record.id] = record
            self._lines += 1
        return self.jobs

    def save(self, record: JobRecord) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.jobs.pop(record.id, None)
        self.jobs[record.id] = record
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record.to_json(), default=str) + "\n")
        self._lines += 1
        if self._lines > 4 * max(len(self.jobs), 100):
            self.compact()

    def compact(self) -> None:
        while len(self.jobs) > self.max_jobs:
            oldest = next((j for j in self.jobs.values() if j.finished_ok), None)
            if oldest is None:
                break
            del self.jobs[oldest.id]
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for record in self.jobs.values():
                f.write(json.dumps(record.to_json(), default=str) + "\n")
        os.replace(tmp, self.path)
        self._lines = len(self.jobs)

    def get(self, job_id: str) -> JobRecord | None:
        return self.jobs.get(job_id)

    def of_user(self, user: str | None) -> list[JobRecord]:
        return [j for j in self.jobs.values() if user is None or j.user == user]

    def unfinished(self) -> list[JobRecord]:
        return [j for j in self.jobs.values() if not j.finished_ok]
