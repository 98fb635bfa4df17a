package events

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// A merged stream of a fleet follows every worker of the pool: one
// subscription per worker, made again whenever it ends (the worker
// restarted, or was unavailable), until the stream ends or the worker is
// taken out of the pool; a worker that joins the pool (a reload, a dynamic
// upstream) is followed when it appears. Resumable hubs (subscribe.go) and,
// with events off, each client's own merged stream (merged.go) are this
// one mechanism with different sinks.

// resubscribeEvery is how often a merged stream looks for workers to
// (re)subscribe to, and how long a worker's ended subscription waits before
// it is made again.
const resubscribeEvery = 250 * time.Millisecond

var (
	errWorkerGone = errors.New("taken out of the pool")
	errWorkerDown = errors.New("unavailable")
)

// workerFollow is what following the workers of one stream needs.
type workerFollow struct {
	ctx context.Context
	// via returns the streams and the reverse_proxy to subscribe through,
	// waiting while there is none; false once ctx ended.
	via func() (*Streams, caddyhttp.Handler, bool)
	// request returns a subscription request to a worker, with its route.
	request func(worker string) (*http.Request, *upstream.Route)
	// answer returns the response writer of a new subscription to worker
	// through s.
	answer func(s *Streams, worker string) *upstream.Answer
	// ended tells how one subscription went: its answer and error, or with
	// a nil answer why none was made (errWorkerGone, errWorkerDown).
	ended func(worker string, a *upstream.Answer, err error)
}

// followPool follows every worker of the pool, and workers that join it,
// until ctx ends. pool is called at every look, with the workers to follow.
func (f *workerFollow) followPool(pool func(*Streams) []*reverseproxy.Upstream) {
	var wg sync.WaitGroup
	defer wg.Wait()
	var mu sync.Mutex
	following := map[string]bool{}
	for {
		s, _, ok := f.via()
		if !ok {
			return
		}
		for _, u := range pool(s) {
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
				f.followWorker(worker)
				mu.Lock()
				delete(following, worker)
				mu.Unlock()
			}(u.Dial)
		}
		if !pause(f.ctx) {
			return
		}
	}
}

// followWorker holds the subscription to one worker for as long as ctx
// lives and the worker stays in the pool.
func (f *workerFollow) followWorker(worker string) {
	for f.ctx.Err() == nil {
		s, next, ok := f.via()
		if !ok {
			return
		}
		u, member := s.workers.Pool().Member(worker)
		if !member {
			f.ended(worker, nil, errWorkerGone)
			return // followed again if it returns to the pool
		}
		if u.Available() {
			f.subscribe(s, next, worker)
		} else {
			f.ended(worker, nil, errWorkerDown)
		}
		pause(f.ctx)
	}
}

// subscribe holds one subscription until it ends.
func (f *workerFollow) subscribe(s *Streams, next caddyhttp.Handler, worker string) {
	sub, rt := f.request(worker)
	a := f.answer(s, worker)
	eventMetrics.subscriptions.WithLabelValues(s.namespace).Inc()
	err := upstream.ServeOwn(next, a, sub)
	eventMetrics.subscriptions.WithLabelValues(s.namespace).Dec()
	rt.Finish(sub)
	f.ended(worker, a, err)
}

// pause waits resubscribeEvery, or until ctx ends; false when it ended.
func pause(ctx context.Context) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(resubscribeEvery):
		return true
	}
}
