package caddymodule

import (
	"bytes"
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// Event streams of a fleet. A client's GET /event (or /global/event) becomes
// one subscription per worker; their events are interleaved as they arrive,
// each whole, into the client's one stream, ids rewritten as on any stream.
// A worker that goes away is subscribed again when it is back, and a worker
// that joins the pool (a reload, a dynamic upstream) is subscribed when it
// appears. Each worker greets a new subscription with server.connected; the
// client gets the first greeting only, as from one opencode.

// resubscribeEvery is how often the merged stream looks for workers to
// (re)subscribe to.
const resubscribeEvery = 250 * time.Millisecond

func (h *Handler) serveMergedEvents(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	base := r.WithContext(ctx)
	base.Header.Del("Accept-Encoding") // events are rewritten as plain text

	var out http.ResponseWriter = w
	var rw *rewritingWriter
	if h.Mode == ModeMapping {
		rw = &rewritingWriter{
			w:         w,
			lookup:    &lookupFunc{resolve: h.index.ClientOf, ctx: ctx},
			maxBuffer: h.MaxBufferSize,
			report:    func(bytes int, ids int64) { h.countRewrite("response", bytes, ids) },
		}
		out = rw
		defer func() { _ = rw.finish() }()
	}
	out.Header().Set("Content-Type", "text/event-stream")
	out.Header().Set("Cache-Control", "no-cache")
	out.Header().Del("Content-Length")
	out.WriteHeader(http.StatusOK)
	controller := http.NewResponseController(out)
	if err := controller.Flush(); err != nil {
		return nil // the client is gone
	}

	events := make(chan []byte, 64)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	subscribed := map[string]bool{}
	var mu sync.Mutex
	subscribe := func() {
		for _, u := range h.fleet.workers() {
			mu.Lock()
			already := subscribed[u.Dial]
			subscribed[u.Dial] = true
			mu.Unlock()
			if already {
				continue
			}
			wg.Add(1)
			go func(worker string) {
				defer wg.Done()
				h.followWorker(ctx, base, next, worker, events)
				mu.Lock()
				delete(subscribed, worker)
				mu.Unlock()
			}(u.Dial)
		}
	}
	subscribe()
	tick := time.NewTicker(resubscribeEvery)
	defer tick.Stop()

	greeted := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			subscribe()
		case ev := <-events:
			if isGreeting(ev) {
				if greeted {
					continue
				}
				greeted = true
			}
			if _, err := out.Write(ev); err != nil {
				return nil
			}
			if err := controller.Flush(); err != nil {
				return nil
			}
		}
	}
}

// followWorker streams one worker's events into events for as long as ctx
// lives and the worker stays in the pool, subscribing again whenever its
// stream ends (the worker restarted, or was unavailable).
func (h *Handler) followWorker(ctx context.Context, base *http.Request, next caddyhttp.Handler, dial string, events chan<- []byte) {
	for ctx.Err() == nil {
		u, ok := h.fleet.member(dial)
		if !ok {
			return // taken out of the pool; subscribed again if it returns
		}
		if u.Available() {
			sub, rt := withRoute(base, dial, false)
			sink := &eventSink{ctx: ctx, events: events, header: http.Header{}}
			err := serveOwn(next, sink, sub)
			rt.done(sub)
			if err != nil && ctx.Err() == nil {
				h.logger.Debug("worker event stream ended", zap.String("worker", dial), zap.Error(err))
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(resubscribeEvery):
		}
	}
}

// isGreeting reports whether an event is the server.connected that every
// new subscription starts with.
func isGreeting(ev []byte) bool {
	return bytes.Contains(ev, []byte(`"type":"server.connected"`)) && len(ev) < 512
}

// eventSink is the response writer of one worker's event stream: it cuts
// the bytes into whole events (each ending with a blank line) and passes
// them on, so that events of different workers never interleave mid-event.
type eventSink struct {
	ctx    context.Context
	events chan<- []byte
	header http.Header
	status int
	buf    []byte
}

func (s *eventSink) Header() http.Header { return s.header }

func (s *eventSink) WriteHeader(status int) {
	if s.status == 0 && status >= 200 {
		s.status = status
	}
}

func (s *eventSink) Write(p []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	if s.status != http.StatusOK {
		return len(p), nil // an error answer: nothing to pass on
	}
	err := wholeEvents(&s.buf, p, func(ev []byte) error {
		select {
		case s.events <- ev:
			return nil
		case <-s.ctx.Done():
			return s.ctx.Err()
		}
	})
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// wholeEvents appends p to what buf holds of an event stream and passes on
// each whole event (ending with a blank line), a copy of its own, keeping
// the rest for the next write.
func wholeEvents(buf *[]byte, p []byte, emit func(ev []byte) error) error {
	*buf = append(*buf, p...)
	for {
		end := bytes.Index(*buf, []byte("\n\n"))
		if end < 0 {
			return nil
		}
		ev := append([]byte(nil), (*buf)[:end+2]...)
		*buf = (*buf)[end+2:]
		if err := emit(ev); err != nil {
			return err
		}
	}
}

// FlushError lets the proxy flush each event; events go on as they complete.
func (s *eventSink) FlushError() error { return nil }
