#!/usr/bin/env bash
# The main job: build Caddy with the session_ids module (xcaddy.sh), then run a
# stock `opencode serve` (opencode-ai from npm, pinned) and Caddy serving
# Caddyfile.example in front of it. Ctrl-C stops both.
#
#   LISTEN=:8080 UPSTREAM_PORT=4096 ./run.sh [opencode serve arguments...]
#
# opencode runs in the current directory with your own opencode configuration
# (providers, models); set OPENCODE_SERVER_PASSWORD to protect it.
set -euo pipefail
repo=$(cd "$(dirname "$0")" && pwd)
OPENCODE_VERSION=1.18.33
export LISTEN=${LISTEN:-:8080}
UPSTREAM_PORT=${UPSTREAM_PORT:-4096}
export UPSTREAM=127.0.0.1:$UPSTREAM_PORT

opencode=${OPENCODE_BIN:-$repo/.cache/opencode-ai-$OPENCODE_VERSION/node_modules/.bin/opencode}
if [ ! -x "$opencode" ]; then
	npm install --no-audit --no-fund --prefix "$repo/.cache/opencode-ai-$OPENCODE_VERSION" "opencode-ai@$OPENCODE_VERSION"
fi
if [ ! -x "$repo/caddy" ] || [ -n "$(find "$repo" -name '*.go' -newer "$repo/caddy" -print -quit)" ]; then
	"$repo/xcaddy.sh" "$repo/caddy"
fi
if [ -n "${OPENCODE_SERVER_PASSWORD:-}" ] && [ -z "${UPSTREAM_AUTHORIZATION:-}" ]; then
	export UPSTREAM_AUTHORIZATION="Basic $(printf 'opencode:%s' "$OPENCODE_SERVER_PASSWORD" | base64 -w0)"
fi

# Both start at once: Caddy holds requests until opencode is healthy.
"$opencode" serve --hostname 127.0.0.1 --port "$UPSTREAM_PORT" "$@" &
opencode_pid=$!
(cd "$repo" && exec ./caddy run --config Caddyfile.example) &
caddy_pid=$!
trap 'kill $caddy_pid $opencode_pid 2>/dev/null; wait' INT TERM EXIT
echo "proxy: http://localhost:${LISTEN##*:}  upstream: http://$UPSTREAM" >&2
wait -n $caddy_pid $opencode_pid
