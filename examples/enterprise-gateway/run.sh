#!/bin/sh
# Enterprise Gateway 3.3 with kernels that move between local hosts, and JupyterLab in
# front of it (jupyter lab --gateway-url). See README.md. Ctrl-C stops both.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
EG_VENV=${EG_VENV:-$root/.venv-eg}
VENV=${VENV:-$root/.venv}
GATEWAY_PORT=${GATEWAY_PORT:-8889}
LAB_PORT=${LAB_PORT:-8888}
KERNEL_WS_CLASS=${KERNEL_WS_CLASS:-kernel_provisioner.gatewayws.GatewayWebSocketConnection}
LAB_TOKEN=${LAB_TOKEN:-$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(16))')}

cd "$here"
# JupyterLab serves var/notebooks (git-ignored): notebooks you make stay out of the example
NOTEBOOK_DIR=${NOTEBOOK_DIR:-$here/var/notebooks}
mkdir -p var "$NOTEBOOK_DIR"
# Kernels run with the python3 on their host's PATH: here the project's venv (ipykernel).
export PATH="$VENV/bin:$PATH"
export JUPYTER_PATH="$here${JUPYTER_PATH:+:$JUPYTER_PATH}"
root_flag=""
[ "$(id -u)" = 0 ] && root_flag="--allow-root"

# EG_OPTS: more options for the gateway, e.g. "--MappingKernelManager.cull_idle_timeout=3600"
# shellcheck disable=SC2086 # word splitting of EG_OPTS is wanted
"$EG_VENV/bin/jupyter-enterprisegateway" --config="$here/enterprise_gateway_config.py" \
    --EnterpriseGatewayApp.port="$GATEWAY_PORT" ${EG_OPTS:-} >var/gateway.log 2>&1 &
gateway=$!
lab=""
# end a process: TERM, up to $2 tenths of a second to go, then KILL
end() {
    kill "$1" 2>/dev/null || return 0
    i=0
    while kill -0 "$1" 2>/dev/null && [ "$i" -lt "$2" ]; do sleep 0.1; i=$((i + 1)); done
    kill -9 "$1" 2>/dev/null || true
}
# JupyterLab first: it shuts its kernels down through the gateway, which must still be up
stop() {
    [ -n "$lab" ] && end "$lab" 80
    end "$gateway" 50
    wait 2>/dev/null || true
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

"$VENV/bin/python" - "$GATEWAY_PORT" <<'PY'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/api/kernelspecs"
for _ in range(300):
    try:
        urllib.request.urlopen(url, timeout=1)
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("Enterprise Gateway did not answer in 30 s: see var/gateway.log")
PY

echo "Enterprise Gateway: http://127.0.0.1:$GATEWAY_PORT (log: $here/var/gateway.log)"
echo "JupyterLab:         http://127.0.0.1:$LAB_PORT/lab?token=$LAB_TOKEN"
# The kernel websocket class: one connection per notebook session at a time, so the first
# notebook's kernel does not stay "unknown" (README.md, "Opening a notebook"). KERNEL_WS_CLASS
# =jupyter_server.gateway.connections.GatewayWebSocketConnection gives jupyter_server's own.
# LAB_OPTS: more options for JupyterLab, e.g. "--LabApp.expose_app_in_browser=True"
# shellcheck disable=SC2086 # word splitting of LAB_OPTS is wanted
"$VENV/bin/jupyter-lab" --gateway-url="http://127.0.0.1:$GATEWAY_PORT" \
    --ServerApp.kernel_websocket_connection_class="$KERNEL_WS_CLASS" \
    --ServerApp.ip=127.0.0.1 --ServerApp.port="$LAB_PORT" --ServerApp.port_retries=0 \
    --IdentityProvider.token="$LAB_TOKEN" --ServerApp.open_browser=False \
    --ServerApp.root_dir="$NOTEBOOK_DIR" $root_flag ${LAB_OPTS:-} &
lab=$!
wait "$lab"
