"""Enterprise Gateway 3.3 with kernels that move between local hosts (127.0.0.60 and up).

Started by ./run.sh (see README.md): `jupyter enterprisegateway` in this folder, with
JUPYTER_PATH pointing here so that kernels/python3-moving is the kernelspec it offers.
"""

c = get_config()  # noqa: F821

c.EnterpriseGatewayApp.ip = "127.0.0.1"
c.EnterpriseGatewayApp.port = 8889
c.EnterpriseGatewayApp.port_retries = 0

# The kernelspecs on JUPYTER_PATH (this folder's kernels/python3-moving); not the gateway's
# own Python, which has no ipykernel.
c.KernelSpecManager.ensure_native_kernel = False
c.EnterpriseGatewayApp.default_kernel_name = "python3-moving"

# JupyterLab lists kernels (GET /api/kernels) through the gateway, which Enterprise Gateway
# forbids unless asked.
c.EnterpriseGatewayApp.list_kernels = True

# Enterprise Gateway refuses kernels for "root" by default. The demo (and CI) run as
# whoever starts them, root in a container; a real deployment keeps root out.
c.EnterpriseGatewayApp.unauthorized_users = set()

# Culling stays off (Enterprise Gateway's default). If you turn it on, a move counts as
# activity: the gap does not make a kernel look idle, and a culled kernel's host is given
# back (tests/integration/test_enterprise_gateway.py runs with culling on).
# c.MappingKernelManager.cull_idle_timeout = 3600
