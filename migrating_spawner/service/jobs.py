"""Headless jobs' REST routes under /services/migrate/api/ (the runner: batch/submit.py):

    POST jobs                 {"notebook": PATH, "profile": P, "parameters": {...}, "name": N,
                               "kernel": K (papermill's -k; default: the notebook's, else
                               python3), "user": U (admins: someone else's job)}: 201 and
                               the job
    GET  jobs[?user=U]        {"jobs": [...]}: the caller's jobs (an admin's: everyone's);
                              404 for a user the hub does not know
    GET  jobs/ID              the job
    POST jobs/ID/cancel       stop it (its server is removed, its host released)

The handlers are built on the control API's own authenticated handler (handed in by
make_app), so the same scopes decide: JupyterHub's `servers` on the user's servers submits
and sees that user's jobs (a user's own token has it), someone else's job reads as missing.
"""

from __future__ import annotations

from typing import Any

from jupyterhub.scopes import has_scope
from tornado import web

from ..batch.jobs import JobRecord
from ..batch.submit import JobInputError, JobRunner

SUBMIT_FIELDS = {"notebook", "profile", "parameters", "name", "user", "kernel"}


def _error(status: int, message: str) -> web.HTTPError:
    return web.HTTPError(status, "%s", message)


class JobsMixin:
    """What the job routes share; mixed into the API's authenticated handler."""

    runner: JobRunner

    def initialize(self, runner: JobRunner, **kwargs: Any) -> None:
        super().initialize(**kwargs)
        self.runner = runner

    def may_see_user(self, username: str) -> bool:
        # a job is a named server of its user: the `servers` scope on that user's servers
        return has_scope(f"servers!user={username}", self.scopes, db=self.db)

    def job(self, job_id: str) -> JobRecord:
        record = self.runner.get(job_id)
        if record is None or not self.may_see_user(record.user):
            raise _error(404, f"no job {job_id}")
        return record

    async def runner_call(self, coro: Any) -> Any:
        try:
            return await coro
        except JobInputError as e:
            raise _error(e.status, str(e)) from None


class ListMixin(JobsMixin):
    async def get(self) -> None:
        user = self.get_argument("user", "") or None
        if user is not None and not (self.may_see_user(user) and self.runner.has_user(user)):
            raise _error(404, f"no user {user}")
        jobs = [j for j in self.runner.list(user) if self.may_see_user(j.user)]
        self.write_json({"jobs": [j.public() for j in jobs]})

    async def post(self) -> None:
        body = self.body(SUBMIT_FIELDS)
        if "notebook" not in body:
            raise _error(400, "notebook is required (a path relative to your home)")
        username = body.get("user") or self.current_user["name"]
        if not isinstance(username, str) or not self.may_see_user(username):
            raise _error(404, f"no user {username}")
        record = await self.runner_call(
            self.runner.submit(
                username,
                body["notebook"],
                profile=body.get("profile"),
                parameters=body.get("parameters"),
                name=body.get("name"),
                by=self.current_user["name"],
                kernel=body.get("kernel"),
            )
        )
        self.write_json(record.public(), 201)


class JobMixin(JobsMixin):
    async def get(self, job_id: str) -> None:
        self.write_json(self.job(job_id).public())


class CancelMixin(JobsMixin):
    async def post(self, job_id: str) -> None:
        self.body(set())
        record = self.job(job_id)
        record = await self.runner_call(self.runner.cancel(record.id, self.current_user["name"]))
        self.write_json(record.public())


def job_handlers(prefix: str, base: type, args: dict) -> list[tuple[str, type, dict]]:
    """The job routes for the control API's application, on `base` (its authenticated
    handler class). The runner starts with the API: unfinished jobs are taken up again."""
    runner = JobRunner(args["controller"], config=args["controller"].app.config)
    runner.start()
    job_args = {**args, "runner": runner}

    def handler(mixin: type) -> type:
        name = "Jobs" + mixin.__name__.replace("Mixin", "Handler")
        return type(name, (mixin, base), {})

    job_id = r"(?P<job_id>[^/]+)"
    return [
        (prefix + "jobs", handler(ListMixin), job_args),
        (prefix + "jobs/" + job_id + "/cancel", handler(CancelMixin), job_args),
        (prefix + "jobs/" + job_id, handler(JobMixin), job_args),
    ]
