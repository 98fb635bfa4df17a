#!/usr/bin/env bash
# Builds ./caddy-cluster (or the path given as $1): what xcaddy.sh builds, plus
# a storage module that several Caddy instances can share (Redis, with a
# distributed lock), for Caddyfile.cluster.example. Pinned like xcaddy.sh; the
# storage module is part of this binary only, not of go.mod.
set -euo pipefail
cd "$(dirname "$0")"
CADDY_VERSION=v2.11.9
XCADDY_VERSION=v0.4.5
REDIS_STORAGE=github.com/pberkel/caddy-storage-redis@v1.8.1
output=${1:-./caddy-cluster}
case "$output" in /*) ;; *) output="$PWD/${output#./}" ;; esac
module=$(go list -m)
go run "github.com/caddyserver/xcaddy/cmd/xcaddy@${XCADDY_VERSION}" build "$CADDY_VERSION" \
	--with "$module@v0.0.0=$PWD" \
	--with "$REDIS_STORAGE" \
	--output "$output"
modules=$("$output" list-modules)
for m in http.handlers.session_ids http.reverse_proxy.selection_policies.session_ids; do
	grep -x "$m" <<<"$modules" >/dev/null || { echo "$output lacks module $m" >&2; exit 1; }
done
grep -x caddy.storage.redis <<<"$modules" >/dev/null || { echo "$output lacks module caddy.storage.redis" >&2; exit 1; }
echo "built $output with $module and $REDIS_STORAGE"
