"""JupyterHub on local hosts: each user server runs on its own loopback address 127.0.0.N.

Run it with `make demo` from the repository root, then open http://127.0.0.1:8000 and log
in as any user with the password below ("admin", the admin, has a password of its own).
Reclaim a user's host with `jupyterhub-migrate reclaim HOST --notice 10` and watch the
server move. Ctrl-C stops it; `make clean` resets it (its state is in `var/`).
"""

import os

from migrating_spawner.service.page import template_path

c = get_config()  # noqa: F821

here = os.path.dirname(os.path.abspath(__file__))
var = os.path.join(here, "var")
os.makedirs(var, exist_ok=True)

c.JupyterHub.bind_url = "http://127.0.0.1:8000"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.db_url = f"sqlite:///{var}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{var}/jupyterhub_cookie_secret"
c.ConfigurableHTTPProxy.pid_file = f"{var}/jupyterhub-proxy.pid"

# A demo's shared passwords (JupyterHub's SharedPasswordAuthenticator): any user name logs in
# with the user password; "admin" logs in with the admin password (it must be 32 characters
# or longer) and may reclaim hosts.
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = "migrate-me"
c.SharedPasswordAuthenticator.admin_password = "migrate-me-as-admin-of-this-demo"
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {"admin"}

c.JupyterHub.spawner_class = "migrating"
c.JupyterHub.proxy_class = "migrating"
c.Spawner.default_url = "/lab"

# Homes on each host's own disk, copied on a move (the harder case; "shared" is simpler).
c.MigratingSpawner.home_mode = "synced"
c.MigratingSpawner.precopy_interval = 15
c.LocalHostProvider.root_dir = f"{var}/hosts"
c.LocalCheckpointStore.root_dir = f"{var}/checkpoints"
c.MigratingController.checkpoint_secret_file = f"{var}/checkpoint_secret"

# The control API (`jupyterhub-migrate`, /services/migrate/api/) runs inside the hub.
c.JupyterHub.services = [{"name": "migrate", "url": "http://127.0.0.1:8095"}]
# Its callers need the scope access:services!service=migrate (JupyterHub's own service
# auth); every user gets it through the default `user` role, so a user's own token (from
# /hub/token) lists and moves their own servers. Admins have it already (the `admin` role),
# and only they (scope admin:servers) may list and reclaim hosts.
c.JupyterHub.extra_user_scopes = {"access:services!service=migrate"}
# headless jobs (`jupyterhub-migrate submit NOTEBOOK`) each run on a named server of their own
c.JupyterHub.allow_named_servers = True
# The service's page for browsers: http://127.0.0.1:8000/services/migrate/ (in the hub's
# Services menu). This line adds a "Moves" link next to each server on the hub home page
# (a home.html that extends the hub's own; the page itself needs no configuration).
c.JupyterHub.template_paths = [template_path()]

# The port-pool TCP gateway (`jupyterhub-migrate gateway connect USER --target-port P`):
# stable 127.0.0.1:10000-10500 addresses for TCP ports of users' servers, through HAProxy
# (Debian `haproxy`), where it is installed.
import shutil  # noqa: E402

c.TCPGateway.enabled = bool(shutil.which("haproxy"))
c.TCPGateway.bind_ip = "127.0.0.1"
c.TCPGateway.allowed_cidrs = ["127.0.0.0/8"]
c.TCPGateway.state_dir = f"{var}/tcp-gateway"
