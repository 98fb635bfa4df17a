package events

import (
	"context"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/internal/shared"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// IDs is what streams need of the handler's ids.
type IDs interface {
	// Mode names how ids reach the upstream ("mapping" or "direct"):
	// streams of different modes are different streams.
	Mode() string
	// Event returns an event with the upstream's ids as the client knows
	// them, having made sure that the mapping of a session the event
	// announces is known here; nil for an event clients must not see.
	Event(ctx context.Context, ev []byte) []byte
}

// Workers is what streams need of the fleet.
type Workers interface {
	// Learn makes sure the pool is known, sending a request through next
	// if need be.
	Learn(r *http.Request, next caddyhttp.Handler)
	// Pool is the pool lb_policy session_ids reported last, or nil.
	Pool() *upstream.Pool
}

// Streams is one handler's event streams: one per config, sharing the hubs
// of its namespace with the handlers of other configs (a reload) through a
// registry that outlives them.
type Streams struct {
	config    *Config
	ids       IDs
	workers   Workers
	namespace string
	logger    *zap.Logger

	resumable   bool
	registry    *registry // the namespace's, also with events off: it counts their clients
	registryKey string
}

// New provisions a handler's streams.
func New(config *Config, namespace string, ids IDs, workers Workers, logger *zap.Logger) (*Streams, error) {
	if err := config.Provision(); err != nil {
		return nil, err
	}
	s := &Streams{config: config, ids: ids, workers: workers, namespace: namespace, logger: logger, resumable: !config.Off}
	s.registryKey = "events|" + namespace
	value, _, err := shared.Pool.LoadOrNew(s.registryKey, func() (caddy.Destructor, error) {
		return newRegistry(namespace), nil
	})
	if err != nil {
		return nil, err
	}
	s.registry = value.(*registry)
	s.registry.join(s)
	return s, nil
}

// Resumable reports whether streams are resumable (events on).
func (s *Streams) Resumable() bool { return s.resumable }

// IsStream reports whether path is one of opencode's event streams.
func IsStream(path string) bool { return path == "/event" || path == "/global/event" }

// Close releases this handler's share of the streams: streams it was
// subscribing through keep running and go on through the next config's
// handler, or end once they have had no client for Linger.
func (s *Streams) Close() {
	if s.registry == nil {
		return
	}
	s.registry.disown(s)
	s.registry = nil
	_, _ = shared.Pool.Delete(s.registryKey)
}
