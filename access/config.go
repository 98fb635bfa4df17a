package access

import (
	"fmt"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Config says how the handler learns whether the upstream would serve a
// caller. See docs/security.md.
type Config struct {
	// Trust, when set, is the placeholder in which a Caddy authentication
	// handler placed before this one names the user it admitted, such as
	// {http.auth.user.id} (basic_auth) or {http.request.header.Remote-User}
	// (forward_auth with copy_headers Remote-User). The handler then asks
	// the upstream nothing: a request on which the placeholder is empty is
	// refused 401, and the user is the caller keyed prompts are bound to.
	// Default: empty (verify with the upstream).
	Trust string `json:"trust,omitempty"`

	// VerifyURI is the upstream route asked, with GET and the caller's own
	// credentials, to learn whether the upstream serves the caller: a 401 or
	// 403 refuses the caller (with that answer), a 5xx or a failure to reach
	// the upstream is answered as it came and not remembered, anything else
	// admits the caller. Requests to /api/ routes are verified with GET
	// /api/health, whose refusal is the one those routes give. Default:
	// /global/health.
	VerifyURI string `json:"verify_uri,omitempty"`

	// VerifiedFor is how long a caller the upstream served is admitted
	// without asking again. A password changed upstream takes this long to
	// lock out a caller of the old one. Default: 30s.
	VerifiedFor caddy.Duration `json:"verified_for,omitempty"`

	// RefusedFor is how long a caller the upstream refused is refused
	// without asking again (with the same answer). Default: 5s.
	RefusedFor caddy.Duration `json:"refused_for,omitempty"`

	// MaxCallers bounds how many verdicts are remembered; a caller whose
	// verdict was forgotten is verified again. Default: 10000.
	MaxCallers int `json:"max_callers,omitempty"`
}

// Defaults of Config.
const (
	DefaultVerifyURI = "/global/health"
	// APIVerifyURI is what requests to opencode's /api routes are verified
	// with: those routes refuse in a shape of their own (a JSON body), which
	// a refused caller gets.
	APIVerifyURI       = "/api/health"
	defaultVerifiedFor = 30 * time.Second
	defaultRefusedFor  = 5 * time.Second
	defaultMaxCallers  = 10000
)

// Provision checks the config and applies the defaults.
func (c *Config) Provision() error {
	if c.VerifiedFor < 0 || c.RefusedFor < 0 || c.MaxCallers < 0 {
		return fmt.Errorf("auth: verified_for, refused_for and max_callers must not be negative")
	}
	if c.Trust != "" && (!strings.HasPrefix(c.Trust, "{") || !strings.HasSuffix(c.Trust, "}")) {
		return fmt.Errorf("auth trust %q: want a placeholder such as {http.auth.user.id}", c.Trust)
	}
	if c.VerifyURI == "" {
		c.VerifyURI = DefaultVerifyURI
	}
	if !strings.HasPrefix(c.VerifyURI, "/") || strings.ContainsAny(c.VerifyURI, "?#") {
		return fmt.Errorf("auth verify %q: want a path starting with / and without a query", c.VerifyURI)
	}
	if c.VerifiedFor == 0 {
		c.VerifiedFor = caddy.Duration(defaultVerifiedFor)
	}
	if c.RefusedFor == 0 {
		c.RefusedFor = caddy.Duration(defaultRefusedFor)
	}
	if c.MaxCallers == 0 {
		c.MaxCallers = defaultMaxCallers
	}
	return nil
}
