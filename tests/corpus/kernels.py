"""A real kernel driven through jupyter_client, for the kernel state tests and benchmark."""

from __future__ import annotations

import json
import os
from pathlib import Path

from jupyter_client import KernelManager

from migrating_spawner.kernelstate import restore_code, snapshot_code

#: a start whose ports were taken is tried again on new ones
START_ATTEMPTS = 3
READY_TIMEOUT = 30


class KernelError(AssertionError):
    pass


class Kernel:
    """One running kernel; `with Kernel(...) as k:` shuts it down whatever happens."""

    def __init__(
        self,
        kernel_name: str = "python3",
        cwd: str | os.PathLike | None = None,
        env: dict[str, str] | None = None,
    ):
        self.km = KernelManager(kernel_name=kernel_name)
        self.language = ""
        self.cwd = str(cwd or os.getcwd())
        self.env = env or {}

    def __enter__(self) -> Kernel:
        env = {**os.environ, "MPLBACKEND": "Agg", "PYDEVD_DISABLE_FILE_VALIDATION": "1", **self.env}
        for _ in range(START_ATTEMPTS - 1):
            try:
                self._start(env)
                return self
            except RuntimeError:
                # jupyter_client picks free ports, then the kernel binds them: another
                # process can take one in between, and IRkernel then never answers
                # ("R_zmq_bind errno: 98") instead of exiting. A new manager picks new ones
                self.km = KernelManager(kernel_name=self.km.kernel_name)
        self._start(env)
        return self

    def _start(self, env: dict[str, str]) -> None:
        self.km.start_kernel(cwd=self.cwd, env=env)
        self.kc = self.km.client()
        try:
            self.kc.start_channels()
            self.kc.wait_for_ready(timeout=READY_TIMEOUT)
            self.language = self.km.kernel_spec.language
        except BaseException:
            self.kc.stop_channels()
            self.km.shutdown_kernel(now=True)
            raise

    def __exit__(self, *exc) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)

    def execute(self, code: str, silent=False, store_history=True, expressions=None) -> dict:
        """Run code; returns the reply content plus "stdout" and "outputs" (iopub)."""
        outputs: list[dict] = []
        reply = self.kc.execute_interactive(
            code,
            silent=silent,
            store_history=store_history,
            user_expressions=expressions or {},
            timeout=600,
            output_hook=lambda m: outputs.append({"type": m["msg_type"], **m["content"]}),
        )["content"]
        reply["outputs"] = [o for o in outputs if o["type"] not in ("status", "execute_input")]
        reply["stdout"] = "".join(o.get("text", "") for o in outputs if o["type"] == "stream")
        return reply

    def run(self, code: str) -> dict:
        """A user cell: it must succeed."""
        reply = self.execute(code)
        if reply["status"] != "ok":
            raise KernelError(f"cell failed: {reply.get('ename')}: {reply.get('evalue')}\n{code}")
        return reply

    def eval(self, expr: str) -> str:
        """repr() (R: print) of an expression, without touching history."""
        if self.language.lower() == "r":  # IRkernel does not answer user_expressions
            reply = self.execute(f"print({expr})", store_history=False)
            if reply["status"] != "ok":
                raise KernelError(f"{expr}: {reply.get('ename')}: {reply.get('evalue')}")
            return reply["stdout"].strip()
        reply = self.execute("", silent=True, store_history=False, expressions={"e": expr})
        out = reply["user_expressions"]["e"]
        if out["status"] != "ok":
            raise KernelError(f"{expr}: {out.get('ename')}: {out.get('evalue')}")
        return out["data"]["text/plain"]

    def snapshot(self, state_dir) -> dict:
        reply = self.execute(
            snapshot_code(self.language, str(state_dir)), silent=True, store_history=False
        )
        assert reply["status"] == "ok", reply
        assert not reply["outputs"], f"the snapshot printed: {reply['outputs']}"
        return json.loads(Path(state_dir, "snapshot-report.json").read_text())

    def restore(self, state_dir, ahead: bool = False) -> dict:
        reply = self.execute(
            restore_code(self.language, str(state_dir), ahead=ahead),
            silent=True,
            store_history=False,
        )
        assert reply["status"] == "ok", reply
        assert not reply["outputs"], f"the restore printed: {reply['outputs']}"
        return json.loads(Path(state_dir, "restore-report.json").read_text())


CANON = Path(__file__).parent / "canon.py"


def canonical(k: Kernel, out: Path) -> dict:
    """Canonical values of the kernel's user variables (computed in the kernel by canon.py)."""
    code = (
        "def __kp_canon():\n    import json, runpy\n"
        f"    m = runpy.run_path({str(CANON)!r})\n"
        f"    with open({str(out)!r}, 'w') as f:\n"
        "        json.dump(m['canon_all'](get_ipython()), f)\n"
        "try:\n    __kp_canon()\nfinally:\n    del __kp_canon"
    )
    reply = k.execute(code, silent=True, store_history=False)
    assert reply["status"] == "ok", reply
    return json.loads(out.read_text())
