package events

import (
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/sessionid/caddy-sessionid/eventlog"
)

// Config configures resumable event streams on GET /event and
// GET /global/event. Every event forwarded carries an SSE `id:`; a client
// that reconnects with `Last-Event-ID` (the header, or the `lastEventID`
// query parameter) gets every event it missed that is still retained, then
// the live stream. When what it missed is no longer retained, or its id is
// not one this Caddy gave out (a restart, another instance), its first event
// is `session_ids.resync`, which tells it to read state again. Clients of the
// same stream (same path, the `directory` and `workspace` the upstream
// honours, and the same caller) share one upstream subscription. What the
// streams of a namespace may hold at once is bounded (MaxStreams,
// MaxClients, MaxClientsPerIP, RetainTotal); beyond a bound a client is
// answered 429. See docs/events.md.
type Config struct {
	// Off turns resumable streams off: each client's stream is proxied (or,
	// with several workers, merged) as it comes, without ids or replay.
	// Default: false (on).
	Off bool `json:"off,omitempty"`

	// RetainEvents is how many of its newest events each stream keeps for
	// clients that resume. Default: 10000.
	RetainEvents int `json:"retain_events,omitempty"`

	// RetainBytes bounds the memory of the events each stream keeps (their
	// bytes, plus 80 per event). Default: 16 MiB.
	RetainBytes int64 `json:"retain_bytes,omitempty"`

	// RetainFor is how long an event is kept for clients that resume.
	// Default: 5m.
	RetainFor caddy.Duration `json:"retain_for,omitempty"`

	// Linger is how long a stream stays subscribed upstream, retaining
	// events, after its last client left, so that a client that reconnects
	// within it misses nothing. A client that comes back later is told to
	// resync. Default: 5m.
	Linger caddy.Duration `json:"linger,omitempty"`

	// WriteTimeout is how long writing events to one client may block before
	// that client is dropped (its stream ends; it may resume). A client that
	// reads too slowly to keep up within the retained events is told to
	// resync instead of holding memory. Default: 30s.
	WriteTimeout caddy.Duration `json:"write_timeout,omitempty"`

	// RetainTotal bounds the memory of the events all streams of the
	// namespace keep together, counted as RetainBytes counts them. When an
	// event would take the total over it, the stream it belongs to gives up
	// its own oldest events (and, when it has none left, the other streams
	// theirs, oldest first); a client that resumes from before what was
	// given up is told to resync. Every stream keeps its newest event, so
	// the total exceeds it only by one event per stream at worst.
	// Default: 256 MiB.
	RetainTotal int64 `json:"retain_total,omitempty"`

	// MaxStreams bounds the streams (upstream subscriptions, each with its
	// retained events) the namespace holds at once, lingering ones
	// included. A client whose stream needs a new one at the bound ends the
	// stream that has been without clients longest; when every stream has
	// clients it is answered 429 with Retry-After. Default: 100.
	MaxStreams int `json:"max_streams,omitempty"`

	// MaxClients bounds the client streams of the namespace at once,
	// resumable and (with events off and several workers) merged alike.
	// One more is answered 429 with Retry-After. Default: 4096.
	MaxClients int `json:"max_clients,omitempty"`

	// MaxClientsPerIP bounds the client streams at once from one client IP
	// (Caddy's, which honours the server's trusted_proxies; IPv6 addresses
	// counted by /64), so that one caller cannot take every place of
	// MaxClients from the others: opencode has one password, and a bound per
	// credential would be one for everyone. One more is answered 429 with
	// Retry-After. Default: 256.
	MaxClientsPerIP int `json:"max_clients_per_ip,omitempty"`
}

// Defaults of Config.
const (
	defaultRetainEvents = 10000
	defaultRetainBytes  = 16 << 20
	defaultRetainFor    = 5 * time.Minute
	defaultLinger       = 5 * time.Minute
	defaultWriteTimeout = 30 * time.Second

	defaultRetainTotal     = 256 << 20
	defaultMaxStreams      = 100
	defaultMaxClients      = 4096
	defaultMaxClientsPerIP = 256
)

// Provision checks the limits and applies the defaults.
func (e *Config) Provision() error {
	if e.RetainEvents < 0 || e.RetainBytes < 0 || e.RetainFor < 0 || e.Linger < 0 || e.WriteTimeout < 0 ||
		e.RetainTotal < 0 || e.MaxStreams < 0 || e.MaxClients < 0 || e.MaxClientsPerIP < 0 {
		return fmt.Errorf("events: limits must not be negative")
	}
	if e.RetainTotal == 0 {
		e.RetainTotal = defaultRetainTotal
	}
	if e.MaxStreams == 0 {
		e.MaxStreams = defaultMaxStreams
	}
	if e.MaxClients == 0 {
		e.MaxClients = defaultMaxClients
	}
	if e.MaxClientsPerIP == 0 {
		e.MaxClientsPerIP = defaultMaxClientsPerIP
	}
	if e.RetainEvents == 0 {
		e.RetainEvents = defaultRetainEvents
	}
	if e.RetainBytes == 0 {
		e.RetainBytes = defaultRetainBytes
	}
	if e.RetainFor == 0 {
		e.RetainFor = caddy.Duration(defaultRetainFor)
	}
	if e.Linger == 0 {
		e.Linger = caddy.Duration(defaultLinger)
	}
	if e.WriteTimeout == 0 {
		e.WriteTimeout = caddy.Duration(defaultWriteTimeout)
	}
	return nil
}

// limits are the retention limits of a stream, whose events count against
// total.
func (e *Config) limits(total *eventlog.Budget) eventlog.Limits {
	return eventlog.Limits{Events: e.RetainEvents, Bytes: e.RetainBytes, Age: time.Duration(e.RetainFor), Total: total}
}
