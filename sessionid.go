// Package caddysessionid plugs the session_ids handler into Caddy: build with
//
//	xcaddy build --with github.com/sessionid/caddy-sessionid
//
// or import this package next to Caddy's standard modules. The handler itself
// is in caddymodule; the mapping domain in idmap.
package caddysessionid

import (
	_ "github.com/sessionid/caddy-sessionid/caddymodule"
)
