"""Tell a kernel websocket that (re)connects what state its kernel is in.

JupyterLab ignores the status messages of kernel_info replies (jupyter_server's
`untracked_message_types`), so after a reconnect (a move's SIGKILL drops every socket) its
indicator shows "Unknown" until the next cell runs. A kernel says its state with no parent
when it starts; do the same for the new socket, once it is connected, to it alone.
"""

from __future__ import annotations

from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection


def telling_status(base: type) -> type:
    """`base` (a ZMQ websocket connection class) that sends the kernel's state on connect."""
    if not issubclass(base, ZMQChannelsWebsocketConnection):
        return base

    class StatusOnConnect(base):  # type: ignore[misc, valid-type]
        def connect(self):
            connected = super().connect()
            if connected is not None:
                connected.add_done_callback(lambda _: self._tell_status())
            return connected

        def _tell_status(self) -> None:
            state = getattr(self.kernel_manager, "execution_state", None)
            if state not in ("idle", "busy") or "iopub" not in self.channels:
                return
            msg = self.session.msg("status", {"execution_state": state})
            self.handle_outgoing_message("iopub", self.session.serialize(msg))

    return StatusOnConnect
