"""MigratingProxy outside a hub: it starts no controller (whose API reads the hub's objects:
a stand-in app made 'JupyterHub' object has no attribute 'hub' in a task nobody awaited)."""

from __future__ import annotations

from types import SimpleNamespace

from proxy_plugin.proxy import MigratingProxy


async def test_a_proxy_with_a_stand_in_app_starts_no_controller():
    proxy = MigratingProxy(
        should_start=False,
        api_url="http://127.0.0.1:1",
        auth_token="x",
        app=SimpleNamespace(subdomain_host="", internal_ssl=False),
        hub=SimpleNamespace(url="http://127.0.0.1:1/hub/"),
    )
    assert proxy._starting_controller is None
    await proxy._start_controller()  # check_routes calls it too: nothing to start
