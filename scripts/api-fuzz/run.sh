#!/usr/bin/env bash
# Fuzzes the HTTP API from its OpenAPI document with schemathesis, reproducibly.
#
# Usage: scripts/api-fuzz/run.sh
#
# The script installs the pinned schemathesis (requirements.txt) from PyPI into a venv, builds
# `agentrun`, starts `agentrun serve` on the subprocess executor with a temporary data folder and
# a TCP listener on 127.0.0.1 with a random bearer token, registers one integration (a shell
# agent) and runs one job of it, so that requests with an {id} or a {job_id} reach real ones
# (schemathesis.toml), and runs every schemathesis phase and check with a fixed seed. It stops the
# service at the end and exits with schemathesis' status.
#
# Environment:
#   API_FUZZ_SEED          seed of the generated data (default 1)
#   API_FUZZ_MAX_EXAMPLES  test cases per operation and phase (default 100)
#   API_FUZZ_OUT           folder for the output, the reports and the service log
#                          (default $CARGO_TARGET_DIR/api-fuzz, else target/api-fuzz)
#   API_FUZZ_VENV          the venv (default $API_FUZZ_OUT/venv); reused when it exists
#   CARGO_TARGET_DIR       where cargo builds (default target)
set -euo pipefail
cd "$(dirname "$0")/../.."

seed=${API_FUZZ_SEED:-1}
max_examples=${API_FUZZ_MAX_EXAMPLES:-100}
target=${CARGO_TARGET_DIR:-target}
out=${API_FUZZ_OUT:-$target/api-fuzz}
venv=${API_FUZZ_VENV:-$out/venv}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# Schemathesis, pinned with everything it imports.
if [[ ! -x $venv/bin/st ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/api-fuzz/requirements.txt
python=$venv/bin/python

# The service: subprocess executor, temporary data folder, TCP on loopback with a token.
cargo build --locked --quiet -p agentrun --bin agentrun
binary=$target/debug/agentrun
work=$(mktemp -d "${TMPDIR:-/tmp}/agentrun-api-fuzz.XXXXXX")
service_pid=
cleanup() {
  if [[ -n $service_pid ]] && kill -0 "$service_pid" 2>/dev/null; then
    kill -TERM "$service_pid"
    wait "$service_pid" || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s\n' "$token" >"$work/token"
cat >"$work/agentrun.toml" <<EOF
executor = "subprocess"
data_dir = "$work/data"
shutdown_grace_secs = 5

[listen]
unix = "$work/api.sock"
tcp = "127.0.0.1:$port"
token_file = "$work/token"

[jobs]
timeout_secs = 10
wait_timeout_secs = 5

[health]
interval_secs = 0
EOF
AGENTRUN_LOG=info "$binary" serve --config "$work/agentrun.toml" >"$out/service.log" 2>&1 &
service_pid=$!
base=http://127.0.0.1:$port

# Wait for /healthz, register the shell agent, run one job and write both ids to $work/ids.
API_FUZZ_BASE=$base API_FUZZ_TOKEN=$token API_FUZZ_WORK=$work "$python" - <<'EOF'
import io, json, os, sys, time, zipfile
import requests

base, token, work = os.environ["API_FUZZ_BASE"], os.environ["API_FUZZ_TOKEN"], os.environ["API_FUZZ_WORK"]
deadline = time.monotonic() + 60
while True:
    try:
        if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
            break
    except requests.RequestException:
        pass
    if time.monotonic() > deadline:
        sys.exit("the service did not answer /healthz within 60 s")
    time.sleep(0.2)

agent = """#!/bin/sh
read -r line || true
case "$line" in
  *'"type":"describe"'*) echo '{"type":"heartbeat"}'; exit 0 ;;
esac
id=$(printf '%s' "$line" | sed -n 's/.*"job_id":\\([0-9]*\\).*/\\1/p')
printf '{"type":"info","job_id":%s,"payload":{"message":"done %s"},"return_code":0}\\n' "$id" "$id"
"""
package = io.BytesIO()
with zipfile.ZipFile(package, "w") as archive:
    archive.writestr("Dockerfile", 'FROM agentrun-busybox:latest\nCOPY agent.sh /agent.sh\nENTRYPOINT ["/bin/sh", "/agent.sh"]\n')
    archive.writestr("agent.sh", agent)
manifest = {
    "name": "Fuzz Echo",
    "section": "canvas",
    "section_element": "nodes",
    "fields": [{"name": "message", "value": "SIFT-USER-NAME", "regex": ".{0,100}"}],
}
response = requests.post(
    f"{base}/v1/integrations",
    headers={"Authorization": f"Bearer {token}"},
    files={
        "manifest": ("manifest.json", json.dumps(manifest), "application/json"),
        "package": ("package.zip", package.getvalue(), "application/zip"),
    },
    timeout=30,
)
if response.status_code != 202:
    sys.exit(f"registering the integration failed: {response.status_code} {response.text}")
agent_id = response.json()["agent_id"]
auth = {"Authorization": f"Bearer {token}"}
deadline = time.monotonic() + 60
while requests.get(f"{base}/v1/integrations/{agent_id}", headers=auth, timeout=10).json()["state"] != "ready":
    if time.monotonic() > deadline:
        sys.exit("the integration was not ready within 60 s")
    time.sleep(0.2)
response = requests.post(
    f"{base}/v1/integrations/{agent_id}/jobs?wait=true",
    headers=auth,
    json={"values": {"message": "fuzz"}},
    timeout=30,
)
if response.status_code != 200:
    sys.exit(f"running a job failed: {response.status_code} {response.text}")
job_id = response.json()["job_id"]
with open(os.path.join(work, "ids"), "w") as ids:
    ids.write(f"{agent_id} {job_id}\n")
print(f"registered integration {agent_id}, ran job {job_id}")
EOF
read -r agent_id job_id <"$work/ids"
export API_FUZZ_AGENT_ID=$agent_id API_FUZZ_JOB_ID=$job_id

# Every phase and check, with a fixed seed and no example database, so that a run repeats.
status=0
"$venv/bin/st" --config-file scripts/api-fuzz/schemathesis.toml run src/service/api/openapi.json \
  --url "$base" \
  --header "Authorization: Bearer $token" \
  --checks all \
  --phases examples,coverage,fuzzing,stateful \
  --seed "$seed" \
  --max-examples "$max_examples" \
  --generation-database none \
  --workers 1 \
  --request-timeout 30 \
  --no-color \
  --report junit,ndjson \
  --report-dir "$out/report" \
  2>&1 | tee "$out/schemathesis.txt" || status=$?

# The service must have survived the run without a panic.
if ! kill -0 "$service_pid" 2>/dev/null; then
  echo "error: the service exited during the run; see $out/service.log" >&2
  status=1
fi
if grep -q 'panicked' "$out/service.log"; then
  echo "error: the service panicked; see $out/service.log" >&2
  status=1
fi
echo "schemathesis output: $out/schemathesis.txt; service log: $out/service.log"
exit "$status"
