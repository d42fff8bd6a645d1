"""JSON over HTTP for `jupyterhub-migrate`: one client per API, errors a person can act on."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import requests


class CLIError(Exception):
    pass


def check_url(url: str, flag: str = "--url") -> str:
    """`url` if it is http(s)://host[...]; otherwise a clear error (not a request to
    wherever `requests` would guess)."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise CLIError(
            f"{flag} {url!r} is not an http:// or https:// URL with a host "
            "(e.g. http://127.0.0.1:8000)"
        )
    return url


def _short(error: requests.RequestException) -> str:
    if isinstance(error, requests.Timeout):
        return "no answer in time"
    if isinstance(error, requests.exceptions.SSLError):
        return "no TLS there: is it http://, not https://?"
    text = str(error)
    if "refused" in text.lower():
        return "connection refused: nothing listens there"
    if "name or service not known" in text.lower() or "resolve" in text.lower():
        return "unknown host name"
    return text


class JSONClient:
    """Calls `<url>/<prefix><path>` with a token; `what` names the API in errors."""

    def __init__(self, url: str, token: str, prefix: str, what: str, flag: str = "--url"):
        self.url = check_url(url, flag).rstrip("/")
        self.base = self.url + "/" + prefix
        self.what = what
        self.flag = flag
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"token {token}"

    def call(
        self, method: str, path: str, body: Any = None, timeout: float = 30, missing: str = ""
    ) -> Any:
        """The decoded JSON answer; `missing` is the message for a JSON 404."""
        target = self.base + path
        try:
            resp = self.session.request(method, target, json=body, timeout=timeout)
        except requests.RequestException as e:
            raise CLIError(f"cannot reach {target} ({_short(e)}): is {self.flag} right?") from None
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, (dict, list)):
            # an HTML page, a proxy's error, another server: not the API at all
            kind = resp.headers.get("Content-Type", "").split(";")[0] or "no content type"
            hint = ""
            if urlsplit(self.url).path.rstrip("/").endswith("/hub"):
                # the URL the browser shows: the API is under the hub's base URL, not /hub/
                hint = f" (the hub's URL is without /hub: {self.url.rstrip('/')[: -len('/hub')]})"
            raise CLIError(
                f"{self.url} is not {self.what}: {method} {target} answered "
                f"{resp.status_code} ({kind}), not the API's JSON{hint}"
            )
        if resp.status_code >= 400:
            message = data.get("message", data) if isinstance(data, dict) else data
            if resp.status_code == 404 and missing:
                message = missing
            raise CLIError(f"{resp.status_code}: {message}")
        return data
