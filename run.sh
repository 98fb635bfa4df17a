#!/usr/bin/env bash
# The main job: build Caddy with the session_ids module (xcaddy.sh), then run
# stock `opencode serve` workers (opencode-ai from npm, pinned) and Caddy
# serving Caddyfile.example in front of them. Ctrl-C stops them all.
#
#   LISTEN=:8080 UPSTREAM_PORT=4096 WORKERS=1 ./run.sh [opencode serve arguments...]
#
# WORKERS=3 starts three workers on UPSTREAM_PORT, UPSTREAM_PORT+1, ... behind
# the one address: each session's requests go to the worker that holds it
# (docs/fleet.md). Every worker runs in the current directory with your own
# opencode configuration (providers, models) and keeps its sessions in its
# own data folder under .cache/workers/ (the first keeps yours); set
# OPENCODE_SERVER_PASSWORD to protect them.
set -euo pipefail
repo=$(cd "$(dirname "$0")" && pwd)
OPENCODE_VERSION=1.18.33
export LISTEN=${LISTEN:-:8080}
UPSTREAM_PORT=${UPSTREAM_PORT:-4096}
WORKERS=${WORKERS:-1}

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

# All start at once: Caddy holds requests until a worker is healthy.
pids=()
upstreams=()
for ((i = 0; i < WORKERS; i++)); do
	port=$((UPSTREAM_PORT + i))
	upstreams+=("127.0.0.1:$port")
	if ((i == 0)); then
		"$opencode" serve --hostname 127.0.0.1 --port "$port" "$@" &
	else
		# Each further worker is a separate opencode: its own database.
		data="$repo/.cache/workers/$port"
		mkdir -p "$data"
		XDG_DATA_HOME="$data" "$opencode" serve --hostname 127.0.0.1 --port "$port" "$@" &
	fi
	pids+=($!)
done
export UPSTREAM="${upstreams[*]}"
(cd "$repo" && exec ./caddy run --config Caddyfile.example) &
pids+=($!)
trap 'kill "${pids[@]}" 2>/dev/null; wait' INT TERM EXIT
echo "proxy: http://localhost:${LISTEN##*:}  workers: $UPSTREAM" >&2
wait -n "${pids[@]}"
