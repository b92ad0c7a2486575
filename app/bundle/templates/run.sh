#!/usr/bin/env bash
# Start glmkb from this bundle with everything offline.
#   ./run.sh --check                  GPU, model load and knowledge bases on one screen, then exit
#   ./run.sh [--host ADDR] [--port N] [serve|web|api] [more flags for that command]
# serve: web UI + API in one process (glmkb serve; web when that command is absent);
# web: glmkb-web (default port 7860); api: glmkb-api (default port 8000).
# Other machines: --host 0.0.0.0 plus a login: GLMKB_UI__AUTH_USER and GLMKB_UI__AUTH_PASSWORD
# for the web UI, GLMKB_API_KEY for the API (glmkb refuses a non-local host without them).
set -euo pipefail
cd "$(dirname "$0")"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export GRADIO_ANALYTICS_ENABLED=False DO_NOT_TRACK=1
export GLMKB_CONFIG="${GLMKB_CONFIG:-$(pwd)/config.yaml}"

HOST="${GLMKB_HOST:-127.0.0.1}"
PORT="${GLMKB_PORT:-}"
CHECK=0
MODE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --check) CHECK=1 ;;
    --host|--port)
      [ $# -ge 2 ] || { echo "run.sh: $1 needs a value (e.g. --host 0.0.0.0, --port 7860)" >&2; exit 2; }
      if [ "$1" = --host ]; then HOST="$2"; else PORT="$2"; fi; shift ;;
    serve|web|api) MODE="$1" ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) break ;;
  esac
  shift
done

BIN=.venv/bin
[ -x "$BIN/python" ] || { echo "run.sh: not installed yet; run ./install.sh first" >&2; exit 1; }
if [ "$CHECK" = 1 ]; then
  exec "$BIN/python" -m app.bundle.check
fi

if [ -z "$MODE" ]; then
  if [ -x "$BIN/glmkb" ] && "$BIN/glmkb" serve --help >/dev/null 2>&1; then MODE=serve; else MODE=web; fi
fi
case "$MODE" in
  serve) CMD=("$BIN/glmkb" serve); PORT="${PORT:-7860}" ;;
  web) CMD=("$BIN/glmkb-web"); PORT="${PORT:-7860}" ;;
  api) CMD=("$BIN/glmkb-api"); PORT="${PORT:-8000}" ;;
esac
export GLMKB_UI__HOST="$HOST" GLMKB_API__HOST="$HOST" GLMKB_UI__PORT="$PORT" GLMKB_API__PORT="$PORT"

case "$HOST" in
  127.*|localhost|::1)
    echo "run.sh: $MODE on http://$HOST:$PORT (this machine only; --host 0.0.0.0 to serve others)" >&2 ;;
  *)
    echo "run.sh: $MODE on $HOST port $PORT for other machines. Open TCP port $PORT in the firewall" >&2
    echo "run.sh:   (firewall-cmd --add-port=$PORT/tcp --permanent && firewall-cmd --reload, or ufw allow $PORT/tcp;" >&2
    echo "run.sh:   cloud servers: the security group too), and set a login: GLMKB_UI__AUTH_USER/GLMKB_UI__AUTH_PASSWORD (web), GLMKB_API_KEY (api)." >&2 ;;
esac
exec "${CMD[@]}" "$@"
