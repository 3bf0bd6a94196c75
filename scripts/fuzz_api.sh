#!/usr/bin/env bash
# Schemathesis over the whole API of a real `das serve`, with the management token, the inference
# token and none: every generated request must get an answer that is not a 5xx.
#   bash scripts/fuzz_api.sh [MAX_EXAMPLES]   (installs schemathesis into .venv if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
EXAMPLES="${1:-40}"
PORT="${PORT:-8393}"
test -x .venv/bin/schemathesis || .venv/bin/pip install --quiet schemathesis
TMP="$(mktemp -d)"
export DAS_MANAGEMENT_TOKEN=m-secret DAS_INFERENCE_TOKEN=i-secret DAS_WORK_DIR="$TMP/work"
export DAS_MAX_STEPS=20 DAS_MAX_IMPORTANCE_SAMPLES=32  # the jobs it uploads stay short
.venv/bin/das serve --port "$PORT" --store "$TMP/store" > "$TMP/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true; rm -rf "$TMP"' EXIT
for _ in $(seq 1 200); do curl -sf "localhost:$PORT/readyz" >/dev/null && break; sleep 0.3; done
status=0
for auth in "Bearer m-secret" "Bearer i-secret" ""; do
  echo "=== Authorization: ${auth:-(none)}"
  args=(); [ -n "$auth" ] && args=(-H "Authorization: $auth")
  .venv/bin/schemathesis run "http://127.0.0.1:$PORT/openapi.json" "${args[@]}" --checks not_a_server_error \
    --max-examples "$EXAMPLES" --workers 1 --no-color | tail -6 || status=1
done
echo "tracebacks in the server log: $(grep -c Traceback "$TMP/serve.log" || true)"
exit $status
