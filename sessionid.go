// Package caddysessionid plugs client-chosen session ids into Caddy: build
// with
//
//	xcaddy build --with github.com/sessionid/caddy-sessionid
//
// or import this package next to Caddy's standard modules. It registers
// every module of the repository: the session_ids handler (caddymodule),
// lb_policy session_ids (lbpolicy) and the `caddy session-id` command
// (idcommand). The mapping domain is in idmap; docs/how-it-works.md maps
// the rest.
package caddysessionid

import (
	_ "github.com/sessionid/caddy-sessionid/caddymodule"
	_ "github.com/sessionid/caddy-sessionid/idcommand"
	_ "github.com/sessionid/caddy-sessionid/lbpolicy"
)
