#!/usr/bin/env bash
# Local Prefect server + process worker on 127.0.0.1 with the WrinkleFree deployments registered.
#
#   scripts/serve_prefect.sh start    server (waits until healthy), work pool, deployments, worker
#   scripts/serve_prefect.sh stop     worker, then server, each by the PID recorded at start
#   scripts/serve_prefect.sh status   what is running, and the PREFECT_API_URL to export
#
# Environment (all optional):
#   PREFECT_PORT        server port (4200)
#   PREFECT_HOME        Prefect's home: profiles, the server's sqlite database (~/.prefect)
#   WRINKLEFREE_POOL    process work pool name (wrinklefree-local; deploy/prefect.yaml uses it)
#   PREFECT_BIN         prefect executable (.venv/bin/prefect when present, else `prefect` on PATH)
#   SERVER_ARGS         extra `prefect server start` arguments (e.g. --no-ui)
#   START_TIMEOUT_S     how long to wait for the server to answer (180)
#   STOP_GRACE_S        how long `stop` waits after the first TERM before insisting (10)
#
# Design choices: each long-running process gets its own session (setsid), so `stop` ends it and
# the children it spawned (uvicorn, flow-run subprocesses) by that one recorded id; PIDs and logs
# live in $PREFECT_HOME/wrinklefree-serve/. Analytics are off, and the default UI is Prefect's V1:
# its pages make no request off the machine (a browser test checks), while the V2 UI fetches an
# Amplitude config even with analytics off. The scheduler keeps one upcoming nightly run, not
# Prefect's default three.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${PREFECT_PORT:-4200}"
POOL="${WRINKLEFREE_POOL:-wrinklefree-local}"
export PREFECT_HOME="${PREFECT_HOME:-$HOME/.prefect}"
export PREFECT_API_URL="http://127.0.0.1:${PORT}/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_UI_V2_ENABLED="${PREFECT_SERVER_UI_V2_ENABLED:-false}"
# One upcoming run per schedule: Prefect keeps at least MIN_RUNS (3) and at least MIN_SCHEDULED_TIME (1 h) ahead.
export PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS="${PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS:-1}"
export PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME="${PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME:-PT1S}"
STATE="$PREFECT_HOME/wrinklefree-serve"
if [[ -n "${PREFECT_BIN:-}" ]]; then
  PREFECT="$PREFECT_BIN"
elif [[ -x "$ROOT/.venv/bin/prefect" ]]; then
  PREFECT="$ROOT/.venv/bin/prefect"
else
  PREFECT="prefect"
fi

running() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_one() {  # $1 = name; end the process group recorded in $STATE/$1.pid
  local pidfile="$STATE/$1.pid"
  if ! running "$pidfile"; then rm -f "$pidfile"; return 0; fi
  local pid; pid="$(cat "$pidfile")"
  # The first TERM asks for a graceful stop (a worker waits for its flow runs); Prefect's handlers
  # turn a second one into SIGKILL, and KILL on the whole group is the last resort.
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  wait_gone "$pid" "${STOP_GRACE_S:-10}" || kill -TERM "$pid" 2>/dev/null || true
  wait_gone "$pid" 5 || kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  echo "stopped $1 (pid $pid)"
}

wait_gone() {  # $1 = pid, $2 = seconds; succeeds once the process is gone
  local deadline=$((SECONDS + $2))
  while kill -0 "$1" 2>/dev/null; do
    ((SECONDS >= deadline)) && return 1
    sleep 0.2
  done
}

start() {
  cd "$ROOT"  # deploy/prefect.yaml's entrypoints and the flows' working directory are the checkout
  mkdir -p "$STATE"
  if running "$STATE/server.pid"; then echo "server already running (pid $(cat "$STATE/server.pid"))" >&2; exit 1; fi
  # shellcheck disable=SC2086  # SERVER_ARGS is a word list on purpose
  setsid "$PREFECT" server start --host 127.0.0.1 --port "$PORT" ${SERVER_ARGS:-} >"$STATE/server.log" 2>&1 < /dev/null &
  echo $! >"$STATE/server.pid"
  local deadline=$((SECONDS + ${START_TIMEOUT_S:-180}))
  until curl -sf "http://127.0.0.1:${PORT}/api/health" >/dev/null; do
    if ! running "$STATE/server.pid"; then echo "server exited; see $STATE/server.log" >&2; tail -20 "$STATE/server.log" >&2; exit 1; fi
    if ((SECONDS > deadline)); then echo "server not healthy after ${START_TIMEOUT_S:-180} s; see $STATE/server.log" >&2; stop_one server; exit 1; fi
    sleep 1
  done
  echo "server healthy at $PREFECT_API_URL"
  "$PREFECT" work-pool create "$POOL" --type process --overwrite >/dev/null
  "$PREFECT" --no-prompt deploy --all --prefect-file deploy/prefect.yaml >"$STATE/deploy.log" 2>&1 \
    || { echo "deploy failed; see $STATE/deploy.log" >&2; tail -30 "$STATE/deploy.log" >&2; exit 1; }
  echo "deployments registered from deploy/prefect.yaml"
  setsid "$PREFECT" worker start --pool "$POOL" --type process >"$STATE/worker.log" 2>&1 < /dev/null &
  echo $! >"$STATE/worker.pid"
  echo "worker started (pid $(cat "$STATE/worker.pid")), pool $POOL"
  echo "export PREFECT_API_URL=$PREFECT_API_URL"
}

status() {
  for name in server worker; do
    if running "$STATE/$name.pid"; then echo "$name: running (pid $(cat "$STATE/$name.pid"))"; else echo "$name: stopped"; fi
  done
  echo "export PREFECT_API_URL=$PREFECT_API_URL"
}

case "${1:-}" in
  start) start ;;
  stop) stop_one worker; stop_one server ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
