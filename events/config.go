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
// same stream (same path, query and credentials) share one upstream
// subscription. See docs/events.md.
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
}

// Defaults of Config.
const (
	defaultRetainEvents = 10000
	defaultRetainBytes  = 16 << 20
	defaultRetainFor    = 5 * time.Minute
	defaultLinger       = 5 * time.Minute
	defaultWriteTimeout = 30 * time.Second
)

// Provision checks the limits and applies the defaults.
func (e *Config) Provision() error {
	if e.RetainEvents < 0 || e.RetainBytes < 0 || e.RetainFor < 0 || e.Linger < 0 || e.WriteTimeout < 0 {
		return fmt.Errorf("events: limits must not be negative")
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

// limits are the retention limits of a stream.
func (e *Config) limits() eventlog.Limits {
	return eventlog.Limits{Events: e.RetainEvents, Bytes: e.RetainBytes, Age: time.Duration(e.RetainFor)}
}
