"""JupyterHub with servers on EC2 spot instances and checkpoints in S3.

Two ways to run it:
- `make demo-aws` (no AWS account): demo.sh starts moto's server and the machine simulator
  (`jupyterhub-migrate-ec2-sim`), creates the bucket and the queue there, and runs this file
  with EC2SIM_DIR set: the hub's EC2 endpoint is the simulator's, instances are 127.0.0.N.
- On AWS: set the values below (or their environment variables) to what README.md has you
  create, and run `jupyterhub -f jupyterhub_config.py` on the hub's instance.
"""

import json
import os
import sys

from migrating_spawner.service.page import template_path

c = get_config()  # noqa: F821

here = os.path.dirname(os.path.abspath(__file__))
var = os.path.join(here, "var")
os.makedirs(var, exist_ok=True)
sim_dir = os.environ.get("EC2SIM_DIR", "")

c.JupyterHub.bind_url = os.environ.get("HUB_BIND_URL", "http://127.0.0.1:8000")
c.JupyterHub.db_url = f"sqlite:///{var}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{var}/jupyterhub_cookie_secret"
c.ConfigurableHTTPProxy.pid_file = f"{var}/jupyterhub-proxy.pid"
# ports of their own beside `make demo` (the proxy's API, the hub's internal API)
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{os.environ.get('PROXY_API_PORT', '8011')}"
c.JupyterHub.hub_port = int(os.environ.get("HUB_PORT", "8091"))

c.JupyterHub.authenticator_class = "shared-password"  # use your own authenticator on AWS
c.SharedPasswordAuthenticator.user_password = "migrate-me"
c.SharedPasswordAuthenticator.admin_password = "migrate-me-as-admin-of-this-demo"
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {"admin"}

c.JupyterHub.spawner_class = "migrating"
c.JupyterHub.proxy_class = "migrating"
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 600  # an instance boots in ~1 minute

# Two profiles: each names a provider instance type, which lists EC2 types (spot picks the
# best pool among them; a type without capacity falls back to the next, then on-demand).
c.MigratingSpawner.profiles = [
    {
        "slug": "spot-lab",
        "display_name": "JupyterLab on spot (2 vCPU, 8 GiB)",
        "instance_type": "lab",
    },
    {
        "slug": "spot-large",
        "display_name": "JupyterLab on spot, large (8 vCPU, 32 GiB)",
        "instance_type": "large",
    },
]
c.EC2HostProvider.instance_types = {
    "lab": {"types": ["m6i.large", "m5.large"]},
    "large": {"types": ["m6i.2xlarge", "m5.2xlarge", "m5a.2xlarge"]},
}
c.MigratingController.provider_class = "migrating_spawner.hosts.ec2.EC2HostProvider"
c.EC2HostProvider.hub_name = os.environ.get("HUB_NAME", "demo-hub")
c.EC2HostProvider.secret_file = f"{var}/ec2_secret"
c.MigratingController.checkpoint_secret_file = f"{var}/checkpoint_secret"

# Homes on each instance's own disk, copied through S3 on a move.
c.MigratingSpawner.home_mode = "synced"
c.MigratingSpawner.precopy_interval = 15
c.MigratingController.store_class = "migrating_spawner.checkpoint.s3.S3CheckpointStore"
c.S3CheckpointStore.bucket = os.environ.get("CHECKPOINT_BUCKET", "demo-hub-checkpoints")
c.CloudEventsChannel.queue_url = os.environ.get("NOTICE_QUEUE_URL", "")

api_port = int(os.environ.get("MIGRATE_API_PORT", "8095"))
c.MigratingController.api_port = api_port
c.JupyterHub.services = [{"name": "migrate", "url": f"http://127.0.0.1:{api_port}"}]
if os.environ.get("DEMO_ADMIN_TOKEN"):  # scripts driving the demo (the hub's REST API)
    c.JupyterHub.services.append(
        {"name": "demo-admin", "api_token": os.environ["DEMO_ADMIN_TOKEN"]}
    )
    c.JupyterHub.load_roles = [{"name": "admin", "services": ["demo-admin"], "users": ["admin"]}]
c.JupyterHub.extra_user_scopes = {"access:services!service=migrate"}
# headless jobs (`jupyterhub-migrate submit NOTEBOOK`) each run on a named server of their own
c.JupyterHub.allow_named_servers = True
c.JupyterHub.template_paths = [template_path()]

if sim_dir:
    # the simulated region: moto's server for S3/SQS, the simulator's EC2 endpoint
    sim = json.load(open(os.path.join(sim_dir, "sim.json")))
    c.EC2HostProvider.endpoint_url = sim["ec2_url"]
    c.EC2HostProvider.region = sim["region"]
    c.EC2HostProvider.image_id = "ami-12c6146b"  # one of moto's
    c.EC2HostProvider.python = sys.executable  # the simulated AMI: this venv
    c.EC2HostProvider.agent_port = int(os.environ.get("AGENT_PORT", "8900"))
    c.S3CheckpointStore.endpoint_url = sim["moto_url"]
    c.CloudEventsChannel.endpoint_url = sim["moto_url"]
    c.CloudEventsChannel.wait_seconds = 2
    c.MigratingController.api_ip = "127.0.0.1"
    # a notice shorter than a boot (`interrupt --notice 30`, boots take 40 s) freezes the old
    # server before the new one is up: its final checkpoint to moto's S3 gets 10 s, not the
    # default 3 (a first checkpoint right after a spawn timed out in 3 s on a busy machine,
    # and with no pre-copy yet the move lost the files and kernels)
    c.MigratingController.final_checkpoint_margin = 10
else:
    # on AWS (README.md): the launch template holds AMI, security groups, instance profile
    c.EC2HostProvider.region = os.environ.get("AWS_REGION", "eu-west-1")
    c.EC2HostProvider.launch_template = os.environ.get("LAUNCH_TEMPLATE", "jupyterhub-hosts")
    c.EC2HostProvider.subnet_ids = os.environ.get("SUBNET_IDS", "").split(",")
    c.EC2HostProvider.install_command = "true"  # the AMI has the package baked in
    c.EC2HostProvider.fis_role_arn = os.environ.get("FIS_ROLE_ARN", "")
    # agents reach the migrate API on the hub's private address (port 8095 open to the
    # hosts' security group only)
    c.MigratingController.api_ip = "0.0.0.0"
    c.EC2HostProvider.hub_api_url = os.environ.get("HUB_API_URL", "")
