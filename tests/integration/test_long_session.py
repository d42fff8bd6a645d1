"""Nothing lost, move after move (issue 8): one long session against an oracle.

A notebook kernel, an R kernel and a kernel with no session live through five moves (a
reclaim with notice, a user's `migrate`, a reclaim with 0 s notice, and two more of these),
two stop/start cycles and a hub restart, in a seeded order, with work between the steps
and cells sent during them. tests/session_oracle.py says what is checked after every step.
The seed and the order are printed; LONG_SESSION_SEED=<n> replays an order, and
LONG_SESSION_STEPS=hub-restart,migrate,... runs the given steps instead;
LONG_SESSION_KEEP_LOG=<file> keeps a copy of the hub log (and <file>.cells, every cell run).
"""

import os
import shutil

import pytest
from session_oracle import LongSession, Unavailable, hub_config, plan

pytestmark = pytest.mark.integration

SEEDS = {"synced": 8, "shared": 80}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("home_mode", ["synced", "shared"])
async def test_long_session_loses_nothing_untold(hub_factory, home_mode):
    seed = int(os.environ.get("LONG_SESSION_SEED", SEEDS[home_mode]))
    hub = await hub_factory(hub_config(home_mode))
    session = LongSession(hub, seed)
    steps = plan(session.rng)
    if os.environ.get("LONG_SESSION_STEPS"):
        steps = os.environ["LONG_SESSION_STEPS"].split(",")
    print(f"home_mode {home_mode}, seed {seed}, order {steps}")
    try:
        result = await session.run(steps)
    except Unavailable as e:
        pytest.skip(str(e))
    if os.environ.get("LONG_SESSION_KEEP_LOG"):
        shutil.copy(hub.log_path, os.environ["LONG_SESSION_KEEP_LOG"])
        with open(os.environ["LONG_SESSION_KEEP_LOG"] + ".cells", "w") as f:
            f.write("\n".join(result["transcript"]) + "\n")
    for line in result["accepted"]:
        print("told and accepted:", line)
    assert result["steps"] == len(steps) and not result["failures"], (
        f"seed {seed}, order {steps}, {result['steps']} of {len(steps)} steps done, "
        f"{len(result['failures'])} failure(s):\n" + "\n".join(result["failures"])
    )
