// Command caddy is Caddy with the standard modules and this repository's,
// the same binary xcaddy.sh builds, for `go run` and the integration tests.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/sessionid/caddy-sessionid"
)

func main() {
	caddycmd.Main()
}
