"""A spare host's server process started ahead (agent/standby.py), through the real agent:
the next process started becomes it, as itself in every way a fresh process would be
(working folder, environment, arguments, `__main__`, exit code, user), or the agent starts
that process the usual way when the standby cannot be it."""

from __future__ import annotations

import json
import os
import pwd
import sys
from pathlib import Path

import pytest
from agent_util import AgentProcess, pid_gone, wait_for
from ec2world import SHARES_THE_MACHINE, interpreter_reachable, made_users_removed

from migrating_spawner.agent.standby import same_python
from migrating_spawner.agent.users import unix_name

#: a module nothing else here imports: in the process's modules only if the standby did
MODULE = "email.mime.audio"

REPORT = f"""#!{sys.executable}
import json, os, sys
print(json.dumps({{
    "pid": os.getpid(), "uid": os.getuid(), "cwd": os.getcwd(), "argv": sys.argv[1:],
    "x": os.environ.get("X"), "home": os.environ.get("HOME"), "name": __name__,
    "preimported": {MODULE!r} in sys.modules, "path0": sys.path[0],
}}), flush=True)
sys.exit(int(os.environ.get("EXIT", "0")))
"""


@pytest.fixture
def agent(tmp_path):
    proc = AgentProcess(tmp_path, "127.0.0.243")
    yield proc
    proc.stop()


@pytest.fixture
def script(tmp_path) -> Path:
    path = tmp_path / "bin" / "report-server"
    path.parent.mkdir()
    path.write_text(REPORT)
    path.chmod(0o755)
    return path


def standby(agent: AgentProcess, modules: list[str]) -> int:
    resp = agent.post("/standby", {"modules": modules})
    assert resp.status_code == 201, resp.text
    assert wait_for(lambda: agent.get("/status").json()["standby"]["state"] == "ready", 30)
    return agent.get("/status").json()["standby"]["pid"]


def report(agent: AgentProcess, name: str) -> dict:
    assert wait_for(lambda: not agent.get(f"/processes/{name}").json()["running"], 30)
    lines = agent.get(f"/processes/{name}/log").json()["lines"]
    return json.loads(lines[-1])


def test_the_next_process_becomes_the_standby(agent, script, tmp_path):
    pid = standby(agent, [MODULE])
    home = tmp_path / "home"
    # found on its PATH, as `jupyterhub-singleuser` is
    env = {"X": "1", "EXIT": "3", "PATH": f"{script.parent}:/usr/bin:/bin"}
    body = {"cmd": [script.name, "--port", "9"], "env": env, "cwd": str(home)}
    started = agent.post("/processes/server", body).json()
    assert started["pid"] == pid  # the standby process itself
    out = report(agent, "server")
    assert out["preimported"] is True and out["pid"] == pid
    assert out["cwd"] == str(home) and out["argv"] == ["--port", "9"] and out["x"] == "1"
    assert out["name"] == "__main__" and out["path0"] == str(script.parent)
    assert agent.get("/processes/server").json()["exit_code"] == 3
    assert agent.get("/status").json()["standby"] is None  # taken: one start, one standby


def test_a_command_it_cannot_be_starts_the_usual_way(agent, script, tmp_path):
    pid = standby(agent, [MODULE])
    plain = agent.post("/processes/plain", {"cmd": ["sh", "-c", "echo plain"]}).json()
    assert plain["pid"] != pid
    assert wait_for(lambda: agent.get("/processes/plain/log").json()["lines"] == ["plain"])
    assert wait_for(lambda: pid_gone(pid))  # not kept for a later start
    assert agent.get("/status").json()["standby"] is None


def test_other_import_time_settings_start_the_usual_way(agent, script, tmp_path):
    pid = standby(agent, [MODULE])
    env = {"JUPYTERHUB_SINGLEUSER_APP": "notebook.notebookapp.NotebookApp"}
    started = agent.post("/processes/other", {"cmd": [str(script)], "env": env}).json()
    assert started["pid"] != pid
    out = report(agent, "other")
    assert out["preimported"] is False and out["name"] == "__main__"
    assert wait_for(lambda: pid_gone(pid))


def test_bad_standby_requests(agent):
    assert agent.post("/standby", {"modules": "jupyter_server"}).status_code == 400
    # a module this Python lacks costs only its time later: the standby still serves
    pid = standby(agent, ["no_such_module_here", MODULE])
    assert not pid_gone(pid)
    assert agent.post("/standby", {"modules": []}).json()["standby"] == "ready"  # the same one
    assert agent.get("/status").json()["standby"]["pid"] == pid


def test_a_host_that_ends_ends_its_standby(agent):
    pid = standby(agent, [MODULE])
    assert agent.post("/shutdown").status_code == 202
    assert wait_for(lambda: pid_gone(pid), 20)


@SHARES_THE_MACHINE
def test_the_standby_takes_the_users_uid(tmp_path, script):
    if os.geteuid() != 0:
        pytest.skip("an agent that runs processes as users needs root")
    with made_users_removed(), interpreter_reachable(tmp_path / "x"):
        agent = AgentProcess(tmp_path, "127.0.0.244", run_as_users=True)
        try:
            pid = standby(agent, [MODULE])
            home = tmp_path / "homes" / "erin"
            body = {"cmd": [str(script)], "cwd": str(home), "user": "erin"}
            assert agent.post("/processes/server", body).json()["pid"] == pid
            out = report(agent, "server")
            uid = pwd.getpwnam(unix_name("erin")).pw_uid
            assert out["uid"] == uid != 0 and out["preimported"] is True
            assert out["home"] == str(home) and home.stat().st_uid == uid
        finally:
            agent.stop()


def test_another_environments_python_is_not_this_one(tmp_path):
    # another venv's python links to the same base binary: its packages are not ours
    other = tmp_path / "other-venv" / "bin"
    other.mkdir(parents=True)
    (other / "python3").symlink_to(os.path.realpath(sys.executable))
    assert same_python(sys.executable)
    assert not same_python(str(other / "python3"))
    assert not same_python("")
