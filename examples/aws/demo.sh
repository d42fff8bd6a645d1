#!/bin/sh
# `make demo-aws`: a hub on the ec2 provider in a simulated region (no AWS account):
# moto's server plays AWS's APIs, jupyterhub-migrate-ec2-sim boots the instances moto
# launches on 127.0.0.100 and up, and the hub runs jupyterhub_config.py against them.
# Ctrl-C stops everything it started: the hub first (its stop checkpoints the servers
# through their agents), then the simulated region, which runs in sessions of its own
# (setsid) so the terminal's Ctrl-C does not end it under the hub's feet.
set -eu
cd "$(dirname "$0")"
mkdir -p var
MOTO_PORT=${MOTO_PORT:-5055}
export MOTO_URL="http://127.0.0.1:$MOTO_PORT"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
export EC2SIM_DIR="$PWD/var/ec2sim"
export JUPYTERHUB_MIGRATE_EC2SIM_DIR="$EC2SIM_DIR"
rm -f "$EC2SIM_DIR/sim.json"
# moto keeps the region in memory: each run is a new region with no instances, buckets or
# checkpoints, so the hub's record of an earlier run's servers (a stopped server's
# checkpoint id: "checkpoint ... is missing" at every start) and the simulated instances'
# folders are stale. Start the hub afresh too.
rm -rf var/jupyterhub.sqlite "$EC2SIM_DIR/instances"

# Run as root, the simulated instances run users' servers as unprivileged users
# (jupyter-<name>, as on EC2): they must pass through every folder above this venv's Python
# and above var/, or each spawn fails with "Permission denied" (a Python under /root, a
# home folder that is 0700 or 0750). Say so now rather than after the first instance boots.
if [ "$(id -u)" = 0 ]; then
	blocked=$(python - <<'EOF'
import os, sys
found = []
for path in (sys.executable, os.path.realpath(sys.executable), os.path.abspath("var/x")):
    d = os.path.dirname(path)
    while True:
        if not os.stat(d).st_mode & 0o001 and d not in found:
            found.append(d)
        if d == "/":
            break
        d = os.path.dirname(d)
print(" ".join(found))
EOF
)
	if [ -n "$blocked" ]; then
		echo "demo-aws: the demo's servers run as unprivileged users, who cannot pass through:" >&2
		echo "  $blocked" >&2
		echo "Let them through (o+x: enter, not list) and run it again:  chmod o+x $blocked" >&2
		exit 1
	fi
fi

setsid moto_server -H 127.0.0.1 -p "$MOTO_PORT" >var/moto.log 2>&1 &
MOTO_PID=$!
SIM_PID=""
# the simulator ends its instances, then moto goes
trap 'kill $SIM_PID 2>/dev/null; wait $SIM_PID 2>/dev/null; kill $MOTO_PID 2>/dev/null; wait' EXIT INT TERM
until curl -s "$MOTO_URL/moto-api/" >/dev/null 2>&1; do sleep 0.2; done
# instances boot in 40 s, as spot instances do (EC2SIM_BOOT_DELAY=0: at once)
setsid jupyterhub-migrate-ec2-sim run --moto-url "$MOTO_URL" \
	--boot-delay "${EC2SIM_BOOT_DELAY:-40}" >var/ec2sim.log 2>&1 &
SIM_PID=$!
until [ -f "$EC2SIM_DIR/sim.json" ]; do sleep 0.2; done
NOTICE_QUEUE_URL=$(python setup_region.py)
export NOTICE_QUEUE_URL

echo "Simulated region up (moto $MOTO_URL, simulator log examples/aws/var/ec2sim.log)."
SIM=$(command -v jupyterhub-migrate-ec2-sim)
echo "Log in at http://127.0.0.1:8000, start a server, then in another terminal:"
echo "  export JUPYTERHUB_MIGRATE_EC2SIM_DIR=$EC2SIM_DIR"
echo "  $SIM list                # the instances; 'running' ones host servers"
echo "  $SIM interrupt <its instance id> --notice 30"
echo "(a user's instance id: $(dirname "$SIM")/jupyterhub-migrate info <name>, with"
echo " JUPYTERHUB_URL=http://127.0.0.1:8000 and a token from http://127.0.0.1:8000/hub/token)"
jupyterhub -f jupyterhub_config.py
