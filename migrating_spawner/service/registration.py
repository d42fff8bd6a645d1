"""POST /services/migrate/api/hosts/register: a new cloud host's agent calls home.

No hub token here: the agent proves itself with the one-time bootstrap token its user data
carried, bound to its host id; the provider checks the token (unused, unexpired) and that
it launched this instance and the instance is running, pins the agent's certificate (the
hub then reaches it only over HTTPS presenting that one) and answers the host's secret.
A refusal is a 403 with a JSON message (the agent logs it and gives up). api.py's
`make_app` adds these handlers (this module imports nothing from api.py).
"""

from __future__ import annotations

import json
from typing import Any

from tornado import web

from ..hosts.base import RegistrationError

REGISTER_FIELDS = {
    "host_id",
    "bootstrap_token",
    "instance_id",
    "address",
    "port",
    "disk",
    "certificate",  # the agent's own (PEM): the hub pins it (agent/tls.py)
}


class RegisterHandler(web.RequestHandler):
    def initialize(self, controller: Any) -> None:
        self.controller = controller

    def check_xsrf_cookie(self) -> None:
        pass  # an agent, not a browser: no cookies are read here

    def answer(self, status: int, data: dict[str, Any]) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.answer(status_code, {"status": status_code, "message": self._reason})

    async def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict) or set(body) - REGISTER_FIELDS:
            fields = ", ".join(sorted(REGISTER_FIELDS))
            return self.answer(400, {"status": 400, "message": f"a JSON object of {fields}"})
        provider = self.controller.provider
        register = getattr(provider, "register", None)
        if register is None:
            message = f"the {provider.name} provider takes no registrations"
            return self.answer(404, {"status": 404, "message": message})
        try:
            answer = await register(body)
        except RegistrationError as e:
            self.controller.log.warning("refused registration of %s: %s", body.get("host_id"), e)
            return self.answer(e.status, {"status": e.status, "message": str(e)})
        self.controller.log.info("host %s registered", body.get("host_id"))
        self.answer(200, answer)


def registration_handlers(prefix: str, controller: Any) -> list[tuple[str, type, dict]]:
    """The routes to add to the control API's application (prefix: `.../api/`)."""
    return [(prefix + "hosts/register", RegisterHandler, {"controller": controller})]
