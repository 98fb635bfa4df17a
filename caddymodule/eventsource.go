package caddymodule

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/eventlog"
	"github.com/sessionid/caddy-sessionid/idmap"
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

// runSingle holds the one subscription of a single worker. The first one
// decides what the hub's first clients get: the stream, or the upstream's
// refusal (401 for wrong credentials, say) or Caddy's error.
func (hub *eventHub) runSingle() {
	granted := false
	for hub.ctx.Err() == nil {
		h, next, owned := hub.current()
		if next == nil {
			hub.waitFor(owned)
			continue
		}
		sub, rt := hub.requestFor("")
		feed := newEventFeed(hub, h)
		feed.onOpen = func() {
			if granted {
				hub.appendGap(eventlog.GapUpstream, "")
			}
			granted = true
			hub.markReady(nil, nil)
		}
		eventMetrics.subscriptions.WithLabelValues(h.Namespace).Inc()
		err := serveOwn(next, feed, sub)
		eventMetrics.subscriptions.WithLabelValues(h.Namespace).Dec()
		rt.done(sub)
		if !granted {
			hub.markReady(feed.refusal(), err)
			hub.registry.remove(hub)
			return
		}
		if hub.ctx.Err() == nil {
			h.logger.Debug("event stream ended; subscribing again", zap.String("path", hub.scope.path), zap.Error(err))
		}
		hub.pause()
	}
}

// runFleet follows every worker of the pool, and workers that join it.
func (hub *eventHub) runFleet() {
	var wg sync.WaitGroup
	defer wg.Wait()
	first := &firstRound{hub: hub, pending: map[string]bool{}}
	var mu sync.Mutex
	following := map[string]bool{}
	granted := map[string]bool{} // workers whose stream was granted before
	for hub.ctx.Err() == nil {
		h, next, owned := hub.current()
		if next == nil {
			hub.waitFor(owned)
			continue
		}
		workers := h.fleet.workers()
		first.expect(workers)
		for _, u := range workers {
			mu.Lock()
			start := !following[u.Dial]
			following[u.Dial] = true
			mu.Unlock()
			if !start {
				continue
			}
			wg.Add(1)
			go func(worker string) {
				defer wg.Done()
				hub.followWorker(worker, first, func(bool) bool {
					mu.Lock()
					defer mu.Unlock()
					before := granted[worker]
					granted[worker] = true
					return before
				})
				mu.Lock()
				delete(following, worker)
				mu.Unlock()
			}(u.Dial)
		}
		hub.pause()
	}
}

// followWorker holds the subscription to one worker for as long as the hub
// lives and the worker stays in the pool. grant records that the worker's
// stream was granted and reports whether it had been before.
func (hub *eventHub) followWorker(worker string, first *firstRound, grant func(bool) bool) {
	for hub.ctx.Err() == nil {
		h, next, owned := hub.current()
		if next == nil {
			hub.waitFor(owned)
			continue
		}
		u, ok := h.fleet.member(worker)
		if !ok {
			first.failed(worker, nil, errWorkerGone)
			return // taken out of the pool; followed again if it returns
		}
		if !u.Available() {
			first.failed(worker, nil, errWorkerDown)
			hub.pause()
			continue
		}
		sub, rt := hub.requestFor(worker)
		feed := newEventFeed(hub, h)
		feed.onOpen = func() {
			if grant(true) {
				hub.appendGap(eventlog.GapUpstream, worker)
			}
			first.granted()
		}
		eventMetrics.subscriptions.WithLabelValues(h.Namespace).Inc()
		err := serveOwn(next, feed, sub)
		eventMetrics.subscriptions.WithLabelValues(h.Namespace).Dec()
		rt.done(sub)
		if !feed.opened {
			first.failed(worker, feed.refusal(), err)
		} else if hub.ctx.Err() == nil {
			h.logger.Debug("worker event stream ended; subscribing again", zap.String("worker", worker), zap.Error(err))
		}
		hub.pause()
	}
}

var (
	errWorkerGone = errors.New("taken out of the pool")
	errWorkerDown = errors.New("unavailable")
)

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
	refusal *upstreamAnswer
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

func (f *firstRound) failed(worker string, refusal *upstreamAnswer, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.decided || !f.pending[worker] {
		return
	}
	delete(f.pending, worker)
	if refusal != nil && (f.refusal == nil || refusal.status < f.refusal.status) {
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
		f.failure = caddyhttp.Error(status, fmt.Errorf("subscribe to the events of worker %s: %s", worker, cause(err)))
	}
	if len(f.pending) == 0 {
		f.decideLocked(f.refusal, f.failure)
	}
}

func (f *firstRound) decideLocked(refusal *upstreamAnswer, failure error) {
	f.decided = true
	if refusal == nil && failure == nil {
		failure = caddyhttp.Error(http.StatusServiceUnavailable, errNoWorkers)
	}
	f.hub.markReady(refusal, failure)
	go f.hub.registry.remove(f.hub)
}

// pause waits before subscribing again, or until the hub ends.
func (hub *eventHub) pause() {
	select {
	case <-hub.ctx.Done():
	case <-time.After(resubscribeEvery):
	}
}

// waitFor waits until the hub has a live handler again, or ends.
func (hub *eventHub) waitFor(owned <-chan struct{}) {
	select {
	case <-hub.ctx.Done():
	case <-owned:
	}
}

// ingest takes one whole event of a subscription: the first greeting is kept
// for every client, later ones (each worker and each new subscription sends
// one) are dropped, heartbeats are live only, and every other event is
// retained. Ids are rewritten once here, for every client.
func (hub *eventHub) ingest(h *Handler, ev []byte) {
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
	if h.Mode == ModeMapping {
		h.followCreate(hub.ctx, ev)
		lookup := &lookupFunc{resolve: h.index.ClientOf, ctx: hub.ctx}
		var ids int64
		ev, ids = idmap.Replace(ev, lookup.lookup)
		h.countRewrite("response", len(ev), ids)
		if lookup.err != nil {
			h.logger.Error("mapping lookup failed while rewriting an event", zap.Error(lookup.err))
		}
	}
	hub.log.Append(ev, isHeartbeat(ev))
}

// appendGap records in the log that events may be missing here.
func (hub *eventHub) appendGap(gap eventlog.Gap, worker string) {
	eventMetrics.resyncs.WithLabelValues(hub.namespace(), string(gap)).Inc()
	hub.log.Append(resyncEvent(hub.scope.path, gap, "", worker), false)
}

func (hub *eventHub) namespace() string {
	if h, _, _ := hub.current(); h != nil {
		return h.Namespace
	}
	return ""
}

// isHeartbeat reports whether an event is opencode's periodic
// server.heartbeat, which only tells a live client that the stream lives.
func isHeartbeat(ev []byte) bool {
	return bytes.Contains(ev, []byte(`"type":"server.heartbeat"`)) && len(ev) < 512
}

// eventFeed is the response writer of one upstream subscription: it cuts
// the bytes into whole events (each ending with a blank line) and hands
// them to the hub, and keeps a refusal's answer.
type eventFeed struct {
	hub    *eventHub
	h      *Handler
	header http.Header
	status int
	opened bool
	onOpen func()
	buf    []byte
	answer *upstreamAnswer
}

func newEventFeed(hub *eventHub, h *Handler) *eventFeed {
	return &eventFeed{hub: hub, h: h, header: http.Header{}}
}

func (f *eventFeed) Header() http.Header { return f.header }

func (f *eventFeed) WriteHeader(status int) {
	if f.status != 0 || status < 200 {
		return
	}
	f.status = status
	if status == http.StatusOK {
		f.opened = true
		f.onOpen()
		return
	}
	f.answer = &upstreamAnswer{status: status, header: f.header.Clone()}
}

func (f *eventFeed) Write(p []byte) (int, error) {
	if f.status == 0 {
		f.WriteHeader(http.StatusOK)
	}
	if !f.opened {
		if f.answer.body.Len() < maxUpstreamAnswer {
			f.answer.body.Write(p)
		}
		return len(p), nil
	}
	if err := f.hub.ctx.Err(); err != nil {
		return 0, err
	}
	_ = wholeEvents(&f.buf, p, func(ev []byte) error {
		f.hub.ingest(f.hub.rewriter(f.h), ev)
		return nil
	})
	return len(p), nil
}

// FlushError lets the proxy flush each event; events go on as they complete.
func (f *eventFeed) FlushError() error { return nil }

// refusal is the upstream's answer when it did not grant the stream.
func (f *eventFeed) refusal() *upstreamAnswer {
	if f.opened {
		return nil
	}
	return f.answer
}
