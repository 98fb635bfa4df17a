package events

import (
	"context"
	"net/http"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// ServeMerged serves a fleet's event stream to one client with resumable
// streams off: one subscription per worker for this client alone, their
// events interleaved as they arrive, each whole, ids rewritten, and nothing
// retained (no ids, no replay). Each worker greets a new subscription with
// server.connected; the client gets the first greeting only, as from one
// opencode. It holds a place of max_clients and max_clients_per_ip as a
// resumable client does.
func (s *Streams) ServeMerged(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	leave, refused := s.registry.admission.admit(r, s.config)
	if refused != "" {
		s.refuse(w, refused)
		return nil
	}
	defer leave()
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	base := r.WithContext(ctx)
	base.Header.Del("Accept-Encoding") // events are rewritten as plain text

	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Del("Content-Length")
	w.WriteHeader(http.StatusOK)
	controller := http.NewResponseController(w)
	if err := controller.Flush(); err != nil {
		return nil // the client is gone
	}

	events := make(chan []byte, 64)
	follow := &workerFollow{
		ctx: ctx,
		via: func() (*Streams, caddyhttp.Handler, bool) { return s, next, ctx.Err() == nil },
		request: func(worker string) (*http.Request, *upstream.Route) {
			return upstream.WithRoute(base, worker, false)
		},
		answer: func(_ *Streams, _ string) *upstream.Answer {
			a := upstream.NewAnswer(0, nil)
			a.Events = func(ev []byte) error {
				select {
				case events <- ev:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return a
		},
		ended: func(worker string, a *upstream.Answer, err error) {
			if a != nil && err != nil && ctx.Err() == nil {
				s.logger.Debug("worker event stream ended", zap.String("worker", worker), zap.Error(err))
			}
		},
	}
	followed := make(chan struct{})
	go func() {
		defer close(followed)
		follow.followPool(func(s *Streams) []*reverseproxy.Upstream { return s.workers.Pool().Upstreams() })
	}()
	defer func() { <-followed }()
	defer cancel()

	greeted := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-events:
			if isGreeting(ev) {
				if greeted {
					continue
				}
				greeted = true
			}
			out := s.ids.Event(ctx, ev)
			if len(out) == 0 {
				continue
			}
			if _, err := w.Write(out); err != nil {
				return nil
			}
			if err := controller.Flush(); err != nil {
				return nil
			}
		}
	}
}
