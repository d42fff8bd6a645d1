"""A job's resume folder: `<staging folder>/.resume/`, moved with the home.

    progress.json     the commit point (written last, atomically): see `Progress`
    notebook.ipynb    the output notebook up to `Progress.done`
    state-a/ state-b/ two kernel snapshots (migrating_spawner.kernelstate): the kept one, and
                      the one the next snapshot goes to, so a snapshot that fails or loses a
                      variable never replaces the last good one
    run.json          the process running the job: host, pid, start time
    pause.json        a pause request from the server: {"until": deadline}
    resume.json       why the next run resumes: {"reason", "time"} (the scheduler writes it)

Cells are numbered by their index in the notebook (0-based); what users read is 1-based.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import nbformat

FOLDER = ".resume"
STATES = ("state-a", "state-b")
#: a job whose process dies this many times at the same cell fails instead of looping
MAX_ATTEMPTS = 3


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


@dataclasses.dataclass
class Progress:
    """What the resume folder says about a job."""

    #: index of the last cell whose output is in notebook.ipynb (-1: none)
    done: int = -1
    #: the last cell whose kernel state was kept: {"cell", "state", "time"}, or None
    kept: dict | None = None
    #: a cell after `kept` whose state could not be kept: {"cell", "reason"}
    unkept: dict | None = None
    #: a cell interrupted at a pause deadline: {"cell", "time"}
    interrupted: dict | None = None
    #: a pause taken at a cell boundary: {"cell", "time", "host"}
    paused: dict | None = None
    #: the cell that failed: {"cell", "error"}
    failed: dict | None = None
    #: every resume: {"host", "cell", "reason", "time", "message"}
    resumes: list = dataclasses.field(default_factory=list)
    #: resumes per cell index (str), to stop a loop at a cell that kills its process
    attempts: dict = dataclasses.field(default_factory=dict)

    @property
    def next_cell(self) -> int:
        """Where a resumed run starts: after the last cell whose state was kept."""
        return self.kept["cell"] + 1 if self.kept else 0

    @property
    def spare_state(self) -> str:
        """The state folder the next snapshot goes to (never the kept one)."""
        kept = self.kept["state"] if self.kept else STATES[1]
        return STATES[0] if kept == STATES[1] else STATES[1]

    def to_dict(self) -> dict:
        return {"version": 1, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> Progress:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


def resume_message(host: str, progress: Progress, reason: str) -> str:
    """ "resumed on <host> at cell N after <reason>", and what is re-run and why."""
    start = progress.next_cell
    text = f"resumed on {host} at cell {start + 1} after {reason}"
    notes = []
    if progress.interrupted and progress.interrupted["cell"] >= start:
        notes.append(f"cell {progress.interrupted['cell'] + 1} was interrupted and is re-run")
    if progress.unkept and progress.unkept["cell"] >= start:
        cells = range(start + 1, progress.done + 2)
        notes.append(
            f"cells {cells[0]}-{cells[-1]} are re-run: the kernel state after cell "
            f"{progress.unkept['cell'] + 1} could not be kept ({progress.unkept['reason']})"
            if len(cells) > 1
            else f"cell {start + 1} is re-run: its kernel state could not be kept "
            f"({progress.unkept['reason']})"
        )
    return text + (f" ({'; '.join(notes)})" if notes else "")


class ResumeFolder:
    """The resume folder of one job (see the module's doc)."""

    def __init__(self, staging_dir: str | os.PathLike):
        self.staging_dir = Path(staging_dir)
        self.root = self.staging_dir / FOLDER

    def state_dir(self, name: str) -> Path:
        return self.root / name

    def load(self) -> Progress | None:
        data = read_json(self.root / "progress.json")
        return Progress.from_dict(data) if data else None

    def save(self, progress: Progress, nb: nbformat.NotebookNode | None = None) -> None:
        """The notebook first, then progress.json: progress never names outputs not on disk."""
        if nb is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.root / "notebook.ipynb.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                nbformat.write(nb, f)
            os.replace(tmp, self.root / "notebook.ipynb")
        write_json(self.root / "progress.json", progress.to_dict())

    def notebook(self) -> nbformat.NotebookNode | None:
        try:
            with open(self.root / "notebook.ipynb", encoding="utf-8") as f:
                return nbformat.read(f, as_version=4)
        except FileNotFoundError:
            return None

    # -- the running process --------------------------------------------------------

    def write_run(self, host: str, pid: int, started: float) -> None:
        write_json(self.root / "run.json", {"host": host, "pid": pid, "started": started})

    def run(self) -> dict | None:
        return read_json(self.root / "run.json")

    # -- pause requests ---------------------------------------------------------------

    def request_pause(self, until: float) -> None:
        write_json(self.root / "pause.json", {"until": until, "time": time.time()})

    def pause_request(self) -> dict | None:
        return read_json(self.root / "pause.json")

    def clear_pause(self) -> None:
        (self.root / "pause.json").unlink(missing_ok=True)

    # -- resume requests --------------------------------------------------------------

    def request_resume(self, reason: str) -> None:
        write_json(self.root / "resume.json", {"reason": reason, "time": time.time()})

    def take_resume_request(self) -> dict | None:
        data = read_json(self.root / "resume.json")
        (self.root / "resume.json").unlink(missing_ok=True)
        return data
