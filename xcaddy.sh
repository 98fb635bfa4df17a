#!/usr/bin/env bash
# Builds ./caddy (or the path given as $1) with the session_ids module from
# this working tree, using xcaddy at a pinned version and a pinned Caddy.
# XCADDY_GO_BUILD_FLAGS replaces xcaddy's build flags (its defaults are
# -ldflags "-w -s" -trimpath -tags nobadger,nomysql,nopgx): CI builds the
# binary with the test-only fault hooks with
# XCADDY_GO_BUILD_FLAGS="-ldflags=-s -trimpath -tags=nobadger,nomysql,nopgx,sessionids_faults".
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
modules=$("$output" list-modules)
for m in http.handlers.session_ids http.reverse_proxy.selection_policies.session_ids; do
	grep -x "$m" <<<"$modules" >/dev/null || { echo "$output lacks module $m" >&2; exit 1; }
done
echo "built $output with $module"
