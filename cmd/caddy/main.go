// Command caddy is Caddy with the standard modules and session_ids, the same
// binary xcaddy.sh builds, for `go run` and the integration tests.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/sessionid/caddy-sessionid/caddymodule"
)

func main() {
	caddycmd.Main()
}
