"""What the JupyterLab widget says, from the service's answers: labextension/src/messages.js
run under Node (the browser test sees one kind of move; these cover the others)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

NODE = shutil.which("node")
MESSAGES = Path(__file__).resolve().parents[2] / "labextension" / "src" / "messages.js"

pytestmark = pytest.mark.skipif(NODE is None, reason="needs Node.js")

NOW = 1_800_000_000

PAUSE = "The page may pause for a few seconds."


def run(expression: str, tmp_path: Path):
    """Evaluate a JavaScript expression over the module `m` (messages.js); its JSON value."""
    # messages.js imports nothing: as an .mjs file Node loads it as the ES module it is
    (tmp_path / "messages.mjs").write_text(MESSAGES.read_text())
    script = tmp_path / "run.mjs"
    script.write_text(
        f"import * as m from './messages.mjs';\nconsole.log(JSON.stringify({expression}));\n"
    )
    out = subprocess.run([NODE, str(script)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_moving_tells_the_reason_and_the_time_left(tmp_path):
    server = {"state": "Floating", "move": {"reason": "reclaim notice", "deadline": NOW + 118}}
    got = run(f"m.movingMessage({json.dumps(server)}, {NOW})", tmp_path)
    assert got == f"Moving to a new host: reclaim notice, 2 min left. {PAUSE}"


def test_moving_from_the_events_of_a_hub_without_move_fields(tmp_path):
    event = {"message": "Moving (reclaim notice for local-11-ab12); 20 s to go", "time": NOW - 5}
    server = {"state": "Floating", "events": [{"message": "older", "time": NOW - 60}, event]}
    got = run(f"m.movingMessage({json.dumps(server)}, {NOW})", tmp_path)
    assert got == f"Moving to a new host: reclaim notice, 15 s left. {PAUSE}"


def test_a_notice_at_its_deadline_says_no_time_left(tmp_path):
    server = {"state": "Floating", "move": {"reason": "reclaim notice", "deadline": NOW}}
    got = run(f"m.movingMessage({json.dumps(server)}, {NOW})", tmp_path)
    assert got == f"Moving to a new host: reclaim notice, no time left. {PAUSE}"


def test_a_refused_token_after_a_resume_asks_to_reload(tmp_path):
    cases = [
        (403, {"worked": True, "away": False}),  # worked, then refused: the tab slept through
        (401, {"worked": True, "away": True}),  # seen Suspended, then refused
        (401, {"worked": True, "away": False}),  # a 401 alone: not enough
        (403, {"worked": False, "away": False}),  # never worked: a setup problem, not a resume
        (0, {"worked": True, "away": True}),  # the hub did not answer: keep polling
        (500, {"worked": True, "away": True}),
    ]
    got = run(f"{json.dumps(cases)}.map(([s, seen]) => m.tokenReplaced(s, seen))", tmp_path)
    assert got == [True, True, False, False, False, False]
    # the service may still take the old token: seen away, then back, is a new spawn too
    got = run(
        "[['Running', true], ['Starting', true], ['Suspended', true], ['Running', false]]"
        ".map(([state, away]) => m.respawned({worked: true, away}, {state}))",
        tmp_path,
    )
    assert got == [True, True, False, False]
    assert run("m.RELOAD_MESSAGE", tmp_path) == (
        "Your server was suspended, stopped or started again: reload this page to reconnect."
    )


def test_a_suspend_and_resume_between_two_polls_is_seen_by_the_spawn_start_time(tmp_path):
    # the polls of one tab: its spawn (started T1), a move (a new host, the same spawn:
    # the hub's start time stays), then a Suspend and Resume that no poll saw (a new spawn,
    # started T2). Each poll is checked against what the polls before it saw.
    polls = [
        {"state": "Running", "host_id": "local-1", "started": NOW},
        {"state": "Floating", "host_id": "local-1", "started": NOW},
        {"state": "Running", "host_id": "local-2", "started": NOW},
        {"state": "Running", "host_id": "local-3", "started": NOW + 30},
    ]
    got = run(
        f"(() => {{ let seen = {{worked: false, away: false, started: null}};"
        f" return {json.dumps(polls)}.map(s => {{ const r = m.respawned(seen, s);"
        " seen = m.saw(seen, s); return r; }); })()",
        tmp_path,
    )
    assert got == [False, False, False, True]
    # a tab opened while the server was away learns its start time from the spawn it gets
    got = run(
        "(() => { let seen = m.saw({worked: false, away: false, started: null},"
        " {state: 'Suspended', started: null});"
        " const back = m.respawned(seen, {state: 'Running', started: 5});"
        " return [seen.away, seen.started, back]; })()",
        tmp_path,
    )
    assert got == [True, None, True]


def test_a_requested_move_has_no_deadline_to_tell(tmp_path):
    server = {"move": {"reason": "requested by alice", "deadline": NOW + 3600}}
    got = run(f"m.movingMessage({json.dumps(server)}, {NOW})", tmp_path)
    assert got == f"Moving to a new host: requested by alice. {PAUSE}"
    server = {"move": {"reason": "request", "deadline": NOW + 3600}}
    got = run(f"m.movingMessage({json.dumps(server)}, {NOW})", tmp_path)
    assert got == f"Moving to a new host: requested. {PAUSE}"


def test_time_left(tmp_path):
    got = run(
        f"[{NOW - 1}, {NOW}, {NOW + 45}, {NOW + 90}].map(d => m.timeLeft(d, {NOW}))", tmp_path
    )
    assert got == ["now", "now", "45 s", "2 min"]


def test_moved_with_the_hold_time_from_the_history(tmp_path):
    server = {"state": "Running", "host_id": "local-12-cd"}
    entry = {
        "kind": "move",
        "outcome": "ok",
        "from_host": "local-11-ab",
        "to_host": "local-12-cd",
        "hold_seconds": 1.26,
        "duration_seconds": 9.0,
        "lost": None,
    }
    got = run(f"m.moveOutcome({json.dumps(server)}, {json.dumps(entry)}, 'local-11-ab')", tmp_path)
    assert got == {"ok": True, "message": "Moved to local-12-cd in 1.3 s"}


def test_moved_tells_what_was_lost(tmp_path):
    server = {"state": "Running", "host_id": "local-12-cd"}
    entry = {
        "kind": "move",
        "outcome": "ok",
        "from_host": "local-11-ab",
        "to_host": "local-12-cd",
        "hold_seconds": 0.4,
        "lost": {
            "files": None,
            "variables": {"k1": ["gen", "conn"]},
            "interrupted_cells": [{"kernel_id": "k1", "cell": "sleep(100)"}],
            "kernels_fresh": [],
        },
    }
    got = run(f"m.moveOutcome({json.dumps(server)}, {json.dumps(entry)}, 'local-11-ab')", tmp_path)
    assert got == {
        "ok": False,
        "message": "Moved to local-12-cd in 0.4 s; variables gen, conn were lost; "
        "1 running cell was interrupted",
    }


def test_a_failed_move(tmp_path):
    server = {"state": "Running", "host_id": "local-11-ab"}
    entry = {"kind": "move", "outcome": "failed", "from_host": "local-11-ab", "error": "no host"}
    got = run(f"m.moveOutcome({json.dumps(server)}, {json.dumps(entry)}, 'local-11-ab')", tmp_path)
    assert got == {"ok": False, "message": "The move failed: no host"}


def test_moved_from_the_events_of_a_hub_without_history(tmp_path):
    lost = "the old host was gone before its final checkpoint: files changed after 14:01 were lost"
    server = {
        "state": "Running",
        "host_id": "local-12-cd",
        "events": [{"message": f"Moved to local-12-cd (127.0.0.12) in 9.2 s; {lost}", "time": NOW}],
    }
    got = run(f"m.moveOutcome({json.dumps(server)}, null, 'local-11-ab')", tmp_path)
    assert got == {"ok": False, "message": f"Moved to local-12-cd in 9.2 s; {lost}"}
    # an entry about another move (an older one) is not this move's
    entry = {"kind": "move", "outcome": "ok", "from_host": "local-9-ef", "to_host": "local-11-ab"}
    server["events"][0]["message"] = "Moved to local-12-cd (127.0.0.12) in 9.2 s"
    got = run(f"m.moveOutcome({json.dumps(server)}, {json.dumps(entry)}, 'local-11-ab')", tmp_path)
    assert got == {"ok": True, "message": "Moved to local-12-cd in 9.2 s"}


def test_status_text(tmp_path):
    got = run(
        "[m.statusText({host_id: 'local-11-ab', state: 'Running'}),"
        " m.statusText({host_id: null, state: 'Suspended'}), m.statusText(null)]",
        tmp_path,
    )
    assert got == ["local-11-ab · Running", "no host · Suspended", "host ?"]
