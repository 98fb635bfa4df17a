package events

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"sync"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/eventlog"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// A hub's upstream subscriptions. With one worker the hub holds one
// subscription through reverse_proxy; with several (lb_policy session_ids)
// it holds one per worker and interleaves their events, each whole, into its
// log. A subscription that ends is made again; when one that had been
// granted is granted again, events sent in between may be lost upstream
// (opencode keeps no history), so the log gets a resync event there.

// run subscribes until the hub ends.
func (hub *eventHub) run() {
	defer close(hub.done)
	if hub.scope.fleet {
		hub.runFleet()
	} else {
		hub.runSingle()
	}
}

// via is the streams and reverse_proxy a hub subscribes through, waiting
// while the config subscriptions went through is unloaded and no client of
// a newer one has come; false once the hub ended.
func (hub *eventHub) via() (*Streams, caddyhttp.Handler, bool) {
	for hub.ctx.Err() == nil {
		s, next, owned := hub.current()
		if next != nil {
			return s, next, true
		}
		select {
		case <-hub.ctx.Done():
		case <-owned:
		}
	}
	return nil, nil, false
}

// feed is the response writer of one of the hub's subscriptions: its
// events go into the log, rewritten by the hub's live streams (s is the
// config the subscription went through, for when none is live).
func (hub *eventHub) feed(s *Streams, onOpen func()) *upstream.Answer {
	a := upstream.NewAnswer(0, nil)
	a.OnOpen = onOpen
	a.Events = func(ev []byte) error {
		if err := hub.ctx.Err(); err != nil {
			return err
		}
		hub.ingest(hub.rewriter(s), ev)
		return nil
	}
	return a
}

// runSingle holds the one subscription of a single worker. The first one
// decides what the hub's first clients get: the stream, or the upstream's
// refusal (401 for wrong credentials, say) or Caddy's error.
func (hub *eventHub) runSingle() {
	granted := false
	for {
		s, next, ok := hub.via()
		if !ok {
			return
		}
		sub, rt := hub.requestFor("")
		feed := hub.feed(s, func() {
			if granted {
				hub.appendGap(eventlog.GapUpstream, "")
			}
			granted = true
			hub.markReady(nil, nil)
		})
		eventMetrics.subscriptions.WithLabelValues(s.namespace).Inc()
		err := upstream.ServeOwn(next, feed, sub)
		eventMetrics.subscriptions.WithLabelValues(s.namespace).Dec()
		rt.Finish(sub)
		if !granted {
			hub.markReady(feed.Refusal(), err)
			hub.registry.remove(hub)
			return
		}
		if hub.ctx.Err() == nil {
			s.logger.Debug("event stream ended; subscribing again", zap.String("path", hub.scope.path), zap.Error(err))
		}
		if !pause(hub.ctx) {
			return
		}
	}
}

// runFleet follows every worker of the pool, and workers that join it.
func (hub *eventHub) runFleet() {
	first := &firstRound{hub: hub, pending: map[string]bool{}}
	var mu sync.Mutex
	granted := map[string]bool{} // workers whose stream was granted before
	follow := &workerFollow{
		ctx:     hub.ctx,
		via:     hub.via,
		request: hub.requestFor,
		answer: func(s *Streams, worker string) *upstream.Answer {
			return hub.feed(s, func() {
				mu.Lock()
				again := granted[worker]
				granted[worker] = true
				mu.Unlock()
				if again {
					hub.appendGap(eventlog.GapUpstream, worker)
				}
				first.granted()
			})
		},
		ended: func(worker string, a *upstream.Answer, err error) {
			switch {
			case a == nil:
				first.failed(worker, nil, err)
			case !a.Opened():
				first.failed(worker, a.Refusal(), err)
			case hub.ctx.Err() == nil:
				hub.logger().Debug("worker event stream ended; subscribing again", zap.String("worker", worker), zap.Error(err))
			}
		},
	}
	follow.followPool(func(s *Streams) []*reverseproxy.Upstream {
		workers := s.workers.Pool().Upstreams()
		first.expect(workers)
		return workers
	})
}

// firstRound decides what a fleet hub's first clients get: the merged
// stream as soon as one worker grants its stream, or, when every worker of
// the pool refused or failed its first subscription, the refusal of one
// (a worker's 401 for wrong credentials, say) or a 503.
type firstRound struct {
	hub *eventHub

	mu      sync.Mutex
	decided bool
	pending map[string]bool // workers whose first subscription is undecided
	seen    bool
	refusal *upstream.Answer
	failure error
}

func (f *firstRound) expect(workers []*reverseproxy.Upstream) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.seen {
		return
	}
	f.seen = true
	for _, u := range workers {
		f.pending[u.Dial] = true
	}
	if len(workers) == 0 {
		f.decideLocked(nil, caddyhttp.Error(http.StatusServiceUnavailable, errNoWorkers))
	}
}

var errNoWorkers = errors.New("no worker is configured")

func (f *firstRound) granted() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.decided = true
	f.hub.markReady(nil, nil)
}

func (f *firstRound) failed(worker string, refusal *upstream.Answer, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.decided || !f.pending[worker] {
		return
	}
	delete(f.pending, worker)
	if refusal != nil && (f.refusal == nil || refusal.Status < f.refusal.Status) {
		f.refusal = refusal // a 4xx says more than a 5xx
	}
	if err != nil && f.failure == nil {
		// Caddy answers with the status of a handler error only when it is
		// one itself, not wrapped.
		status := http.StatusServiceUnavailable
		var he caddyhttp.HandlerError
		if errors.As(err, &he) && he.StatusCode != 0 {
			status = he.StatusCode
		}
		f.failure = caddyhttp.Error(status, fmt.Errorf("subscribe to the events of worker %s: %s", worker, upstream.Cause(err)))
	}
	if len(f.pending) == 0 {
		f.decideLocked(f.refusal, f.failure)
	}
}

func (f *firstRound) decideLocked(refusal *upstream.Answer, failure error) {
	f.decided = true
	if refusal == nil && failure == nil {
		failure = caddyhttp.Error(http.StatusServiceUnavailable, errNoWorkers)
	}
	f.hub.markReady(refusal, failure)
	go f.hub.registry.remove(f.hub)
}

// ingest takes one whole event of a subscription: the first greeting is kept
// for every client, later ones (each worker and each new subscription sends
// one) are dropped, heartbeats are live only, and every other event is
// retained. Ids are rewritten once here, for every client.
func (hub *eventHub) ingest(s *Streams, ev []byte) {
	if isGreeting(ev) {
		hub.mu.Lock()
		defer hub.mu.Unlock()
		if hub.greeting == nil {
			hub.greeting = ev
			// Clients already reading get it from the log, live only.
			hub.log.Append(ev, true)
		}
		return
	}
	if ev = s.ids.Event(hub.ctx, ev); len(ev) == 0 {
		return // not the clients' (a moved session's deletion on its old worker)
	}
	hub.log.Append(ev, isHeartbeat(ev))
}

// appendGap records in the log that events may be missing here.
func (hub *eventHub) appendGap(gap eventlog.Gap, worker string) {
	eventMetrics.resyncs.WithLabelValues(hub.namespace(), string(gap)).Inc()
	hub.log.Append(resyncEvent(hub.scope.path, gap, "", worker), false)
}

func (hub *eventHub) logger() *zap.Logger {
	if s, _, _ := hub.current(); s != nil {
		return s.logger
	}
	return zap.NewNop()
}

func (hub *eventHub) namespace() string {
	if s, _, _ := hub.current(); s != nil {
		return s.namespace
	}
	return ""
}

// isGreeting reports whether an event is the server.connected that every
// new subscription starts with.
func isGreeting(ev []byte) bool {
	return bytes.Contains(ev, []byte(`"type":"server.connected"`)) && len(ev) < 512
}

// isHeartbeat reports whether an event is opencode's periodic
// server.heartbeat, which only tells a live client that the stream lives.
func isHeartbeat(ev []byte) bool {
	return bytes.Contains(ev, []byte(`"type":"server.heartbeat"`)) && len(ev) < 512
}
