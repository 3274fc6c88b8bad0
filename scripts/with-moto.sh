#!/usr/bin/env bash
# Runs a command with moto (the local AWS) listening on a free loopback port, then stops moto.
# The command sees AWS_ENDPOINT_URL and test credentials; nothing reaches a real AWS account.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
port=$("$root/.venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp -t ferry-moto.XXXXXX.log)
"$root/.venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null; wait $moto 2>/dev/null; rm -f "$log"' EXIT INT TERM
for _ in $(seq 1 200); do
  if "$root/.venv/bin/python" -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then break; fi
  kill -0 $moto 2>/dev/null || { echo "moto failed to start:" >&2; cat "$log" >&2; exit 1; }
  sleep 0.1
done
export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
  AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
echo "moto listening on $AWS_ENDPOINT_URL" >&2
"$@"
