package upstream

import "github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

// Pool is the workers reverse_proxy balances, as the policy saw them: the
// upstreams in the config's order and an index by dial address, so that
// finding a worker costs the same with 3 workers or 300. The policy builds
// one per pool it is given (once for static upstreams, once per answer of a
// dynamic source) and reports it on every route; the handler keeps the last.
type Pool struct {
	upstreams []*reverseproxy.Upstream
	byDial    map[string]*reverseproxy.Upstream
}

// NewPool indexes a pool.
func NewPool(upstreams []*reverseproxy.Upstream) *Pool {
	p := &Pool{upstreams: upstreams, byDial: make(map[string]*reverseproxy.Upstream, len(upstreams))}
	for _, u := range upstreams {
		p.byDial[u.Dial] = u
	}
	return p
}

// Upstreams returns the pool's workers in order; none for a nil pool.
func (p *Pool) Upstreams() []*reverseproxy.Upstream {
	if p == nil {
		return nil
	}
	return p.upstreams
}

// Len is the number of workers.
func (p *Pool) Len() int { return len(p.Upstreams()) }

// Member returns the upstream of a worker by its dial address.
func (p *Pool) Member(dial string) (*reverseproxy.Upstream, bool) {
	if p == nil {
		return nil, false
	}
	u, ok := p.byDial[dial]
	return u, ok
}

// Indexes reports whether p is the index of exactly this pool slice: static
// upstreams are the same slice on every request, so this costs the same for
// any size.
func (p *Pool) Indexes(upstreams []*reverseproxy.Upstream) bool {
	if p == nil {
		return false
	}
	a := p.upstreams
	return len(a) == len(upstreams) && (len(a) == 0 || &a[0] == &upstreams[0])
}
