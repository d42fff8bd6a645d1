"""What the hub says about batch jobs (no jupyter-scheduler or nbformat needed: the hub
imports this)."""

from __future__ import annotations

from typing import Any


def job_paused_message(job: dict[str, Any]) -> str:
    """One job of a freeze's report (`MigratingScheduler.pause_running`), for the events."""
    name = job.get("name") or "a job"
    if not job.get("paused"):
        return f"Batch job {name}: {job.get('reason', 'not paused')}; it resumes with the server"
    text = f"Batch job {name} paused before cell {job.get('next_cell')}"
    if job.get("interrupted_cell"):
        text += f" (cell {job['interrupted_cell']} was interrupted: it runs again)"
    return text + ": it resumes with the server"
