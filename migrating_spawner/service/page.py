"""The hub page of the `migrate` service: `/services/migrate/` in a browser.

A person who opens the service (from the hub's Services menu, or the link next to each
server on the hub home page) logs in with the hub's OAuth, as with any JupyterHub service,
and gets a page rendered with the hub's own `page.html` (look and navigation of the hub,
the pattern of jupyterhub-announcement): their servers (an admin: everyone's, and the
hosts) with their state, host and last checkpoint, the buttons Migrate, Suspend, Resume
and Cancel, and each server's history. The page is a shell; its script
(`static/migrate.js`, plain JavaScript) polls the control API with the OAuth cookie and
sends JupyterHub's XSRF token with every POST.

The service runs inside the hub process, where the hub starts no service and so gives it
no OAuth client secret: `service_oauth()` takes the service spec's `api_token` if the
operator gave one, else derives one from the hub's cookie secret and registers it with the
hub's OAuth provider itself, so the spec needs only the service's name and url.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import sysconfig
from pathlib import Path
from typing import Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader
from jupyterhub import orm
from jupyterhub.scopes import get_scopes_for, parse_scopes
from jupyterhub.services.auth import (
    HubOAuth,
    HubOAuthCallbackHandler,
    HubOAuthenticated,
    UserNotAllowed,
)
from tornado import web
from traitlets import Any as AnyTrait
from traitlets import default

SHARE = Path("share") / "jupyterhub-migrating"

# What the page's token may do, intersected by the hub with what its user may do: a user's
# own servers (`servers!user=alice`); for an admin every server and the hosts.
PAGE_SCOPES = ("servers", "admin:servers")


def share_dir() -> Path:
    """`share/jupyterhub-migrating`: the source tree's (a checkout or an editable install,
    where the wheel's shared data is not installed) or the installed wheel's."""
    source = Path(__file__).resolve().parents[2] / SHARE
    candidates = [source, Path(sysconfig.get_path("data")) / SHARE, Path(sys.prefix) / SHARE]
    for path in candidates:
        if (path / "templates").is_dir():
            return path
    return source


def template_path() -> str:
    """The templates folder for `c.JupyterHub.template_paths` (its `home.html` adds a link
    to this page next to each server on the hub home page)."""
    return str(share_dir() / "templates")


class ServiceOAuth(HubOAuth):
    """HubOAuth for a service that runs inside the hub process.

    It asks the hub's own REST API who a token belongs to and what it may do (`GET
    <hub>/api/user`, answers cached for `cache_max_age`), as any JupyterHub service does;
    its defaults come from the hub object, not from a service's environment (the hub's is
    not a service's). One instance serves the page, the OAuth callback and the API: a
    token in the header first, else the page's cookie (it also keeps the OAuth states of
    logins under way). Configurable as `c.HubOAuth` or `c.ServiceOAuth`.
    """

    hub = AnyTrait(help="The hub's `jupyterhub.objects.Hub`: where its API is.")

    @default("api_url")
    def _default_api_url(self) -> str:
        return self.hub.api_url

    @default("hub_prefix")
    def _default_hub_prefix(self) -> str:
        return self.hub.base_url

    @default("allow_token_in_url")
    def _default_allow_token_in_url(self) -> bool:
        return False  # a token in a URL ends up in access logs

    @default("cache_max_age")
    def _default_cache_max_age(self) -> int:
        # the hub is in this process, so asking is cheap; a revoked token stops working
        # within a minute instead of JupyterHub's default five
        return 60


def _derived(app: Any, purpose: str) -> bytes:
    """A secret for `purpose`, stable as long as the hub's cookie secret is."""
    return hmac.new(app.cookie_secret, purpose.encode(), hashlib.sha256).digest()


def _spec(app: Any, name: str) -> dict[str, Any]:
    for spec in app.services:
        if spec.get("name") == name:
            return spec
    return {}


def service_oauth(controller: Any) -> ServiceOAuth:
    """The service's OAuth client, set up in the hub: its secret, scopes, no confirmation."""
    app = controller.app
    name = controller.service_name
    spec = _spec(app, name)
    client_id = spec.get("oauth_client_id") or f"service-{name}"
    secret = spec.get("api_token") or _derived(app, f"{client_id} oauth client").hex()
    orm_service = orm.Service.find(app.db, name)
    client = orm_service.oauth_client if orm_service is not None else None
    redirect_uri = client.redirect_uri if client else controller.base_url + "oauth_callback"
    scopes = set(client.allowed_scopes) if client else set()
    if "oauth_client_allowed_scopes" not in spec:
        scopes.update(PAGE_SCOPES)  # an operator's own choice stays as it is
    scopes.add(f"access:services!service={name}")
    # registered again with its secret (the hub registered it without one: it starts no
    # process for this service, so it made no token for it)
    client = app.oauth_provider.add_client(
        client_id=client_id,
        client_secret=secret,
        redirect_uri=redirect_uri,
        allowed_scopes=sorted(scopes),
        description=f"JupyterHub service {name}",
    )
    if orm_service is not None and orm_service.oauth_client is not client:
        orm_service.oauth_client = client
        app.db.commit()
    if spec.get("oauth_no_confirm", True):
        # the page is part of the hub: no "authorize access?" page in between
        app.tornado_settings.setdefault("oauth_no_confirm_list", set()).add(client_id)
    return ServiceOAuth(
        parent=controller,
        hub=app.hub,
        base_url=controller.base_url,
        api_token=secret,
        oauth_client_id=client_id,
        oauth_redirect_uri=redirect_uri,
        access_scopes={f"access:services!service={name}"},
    )


def settings(controller: Any) -> dict[str, Any]:
    """tornado settings the page needs: the secret that signs its cookies."""
    return {"cookie_secret": _derived(controller.app, "migrate service cookies")}


def wants_html(request: Any) -> bool:
    """A browser's navigation asks for HTML first; the hub's health check and API clients
    (`*/*`, `application/json`) get the JSON answer."""
    return "text/html" in request.headers.get("Accept", "")


class PageHandler(HubOAuthenticated, web.RequestHandler):
    """`/services/migrate/`: the page for browsers, a short JSON answer for the others (the
    hub checks a service's health with a GET here, once a minute)."""

    def initialize(self, controller: Any, hub_auth: ServiceOAuth, env: Environment) -> None:
        self.controller = controller
        self.hub_auth = hub_auth
        self.env = env

    async def prepare(self) -> None:
        if not wants_html(self.request):
            return
        # the mixin's get_current_user would wait for the hub's answer synchronously, on
        # the very loop the hub answers on: ask without blocking, cache it where it looks
        model = await self.hub_auth.get_user(self, sync=False)
        self._hub_auth_user_cache = None
        if model is not None:
            try:
                self._hub_auth_user_cache = self.check_hub_user(model)
            except UserNotAllowed:
                raise web.HTTPError(
                    403, f"{model['name']} may not use the {self.controller.service_name} service"
                ) from None

    async def get(self) -> None:
        if not wants_html(self.request):
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"service": self.controller.service_name, "api": "api/"}))
            return
        if self.current_user is None:
            self.redirect(self.get_login_url())
            return
        template = self.env.get_template("migrate.html")
        self.finish(await template.render_async(**self.namespace(self.current_user)))

    def namespace(self, model: dict[str, Any]) -> dict[str, Any]:
        """What the hub's `page.html` expects (as the hub's own handlers give it), and the
        page's own configuration for its script."""
        app = self.controller.app
        hub_settings = app.tornado_settings
        orm_user = orm.User.find(app.db, model["name"]) if model["kind"] == "user" else None
        user = app.users[orm_user] if orm_user is not None else None
        expanded = set(get_scopes_for(orm_user)) if orm_user is not None else set()
        scopes = set(model.get("scopes", ()))
        base_url = self.controller.base_url
        static_class = hub_settings.get("static_handler_class", web.StaticFileHandler)

        def static_url(path: str, include_version: bool = True) -> str:
            return static_class.make_static_url(hub_settings, path, include_version)

        def own_static(path: str) -> str:
            return web.StaticFileHandler.make_static_url(self.static_settings(), path)

        ns: dict[str, Any] = {
            "base_url": app.hub.base_url,
            "prefix": app.base_url,
            "user": user,
            "login_url": hub_settings.get("login_url", ""),
            "logout_url": hub_settings.get("logout_url", ""),
            "static_url": static_url,
            "version_hash": hub_settings.get("version_hash", ""),
            "services": self.services(expanded),
            "parsed_scopes": parse_scopes(expanded),
            "expanded_scopes": expanded,
            "xsrf_token": self.xsrf_token.decode("ascii"),
            "no_spawner_check": True,
            "migrate_static": own_static,
            "migrate_config": {
                "api": base_url + "api/",
                "user": model["name"],
                "admin": "admin:servers" in scopes,
                "xsrf": self.xsrf_token.decode("ascii"),
                "hub": app.hub.base_url,
                "prefix": app.base_url,
            },
        }
        for key, value in (hub_settings.get("template_vars") or {}).items():
            ns.setdefault(key, value(user) if callable(value) else value)
        return ns

    def services(self, expanded: set[str]) -> list[dict[str, str]]:
        """The services the navbar lists, as the hub's own pages do: those with a URL,
        shown, and that this user may access."""
        found = []
        for service in self.controller.app.db.query(orm.Service).order_by(orm.Service.name):
            if not service.url or service.display is False or service.server is None:
                continue
            if {"access:services", f"access:services!service={service.name}"} & expanded:
                found.append({"name": service.name, "href": service.server.base_url})
        return found

    def static_settings(self) -> dict[str, Any]:
        return {
            "static_path": str(share_dir() / "static"),
            "static_url_prefix": self.controller.base_url + "static/",
        }


class CallbackHandler(HubOAuthCallbackHandler):
    """The end of the OAuth login: sets the service's cookie, back to the page."""

    def initialize(self, hub_auth: ServiceOAuth) -> None:
        self.hub_auth = hub_auth

    async def prepare(self) -> None:
        # as in PageHandler.prepare: never the blocking get_current_user
        model = await self.hub_auth.get_user(self, sync=False)
        self._hub_auth_user_cache = model


def handlers(controller: Any, oauth: ServiceOAuth) -> list[tuple]:
    """The page's routes, for the service's tornado app (service/api.py make_app)."""
    hub_env = controller.app.tornado_settings["jinja2_env"]
    env = Environment(
        loader=ChoiceLoader([FileSystemLoader(template_path()), hub_env.loader]),
        autoescape=True,
        enable_async=True,
    )
    base = controller.base_url
    return [
        (base, PageHandler, {"controller": controller, "hub_auth": oauth, "env": env}),
        (base + "oauth_callback", CallbackHandler, {"hub_auth": oauth}),
        (
            base + "static/(.*)",
            web.StaticFileHandler,
            {"path": str(share_dir() / "static")},
        ),
    ]
