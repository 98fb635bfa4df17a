#!/usr/bin/env bash
# Builds ./caddy (or the path given as $1) with the session_ids module from
# this working tree, using xcaddy at a pinned version and a pinned Caddy.
set -euo pipefail
cd "$(dirname "$0")"
CADDY_VERSION=v2.11.9
XCADDY_VERSION=v0.4.5
output=${1:-./caddy}
case "$output" in /*) ;; *) output="$PWD/${output#./}" ;; esac
module=$(go list -m)
go run "github.com/caddyserver/xcaddy/cmd/xcaddy@${XCADDY_VERSION}" build "$CADDY_VERSION" \
	--with "$module@v0.0.0=$PWD" \
	--output "$output"
"$output" list-modules | grep -x 'http.handlers.session_ids' >/dev/null # not -q: with pipefail, an early exit would fail the pipe
echo "built $output with $module"
