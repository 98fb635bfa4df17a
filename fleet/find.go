package fleet

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// downWorkerWait bounds how long discovery waits for workers that are down
// (a few health_interval; Caddyfile.example checks every 250 ms).
const downWorkerWait = 3 * time.Second

// ErrWorkerUnknown: the session may be on a worker that cannot be asked.
type ErrWorkerUnknown struct {
	Session string
	Down    []string
}

func (e ErrWorkerUnknown) Error() string {
	return fmt.Sprintf("the worker of session %s is not recorded, and workers that could hold it are unavailable: %v", e.Session, e.Down)
}

// WorkerOf returns the worker that holds the session the client calls id,
// or "" when the session is not known anywhere (the fallback then chooses,
// and the worker it reaches answers 404 as a lone opencode would).
//
// A request for a session being moved waits here until the move ends, and
// then goes to the session's new worker.
func (f *Fleet) WorkerOf(r *http.Request, next caddyhttp.Handler, id string) (string, error) {
	return f.workerOf(r, next, id, true)
}

// upstreamID is the real id of a client id: its mapping's, or its own.
func (f *Fleet) upstreamID(r *http.Request, id string) (string, error) {
	realID, _, mapped, err := f.index.Route(r.Context(), id)
	if err != nil || !mapped {
		return id, err
	}
	return realID, nil
}

// workerOf is WorkerOf; a request already counted as a change under way of
// the session (moving.Enter) must not wait for a move's hold, which waits
// for it.
func (f *Fleet) workerOf(r *http.Request, next caddyhttp.Handler, id string, wait bool) (string, error) {
	ctx := r.Context()
	realID, worker, mapped, err := f.index.Route(ctx, id)
	if err != nil {
		return "", err
	}
	held := realID
	if !mapped {
		held = id
	}
	if wait {
		waited, err := f.moves.Wait(ctx, held)
		if err != nil {
			return "", err
		}
		if waited {
			if realID, worker, mapped, err = f.index.Route(ctx, id); err != nil {
				return "", err
			}
		}
	}
	if mapped && worker != "" {
		return worker, nil
	}
	if !mapped {
		realID = id
	}
	if f.Learn(r, next); !f.Several() {
		return "", nil
	}
	if worker, known, err := f.index.WorkerOf(ctx, realID); err != nil || known {
		return worker, err
	}
	if f.index.Unplaced(realID) {
		return "", nil
	}
	found, err, _ := f.discovery.Do(realID, func() (any, error) {
		// Shared by every request waiting for this id: one client giving up
		// must not fail the others.
		return f.discover(r.WithContext(context.WithoutCancel(r.Context())), next, realID)
	})
	if err != nil {
		return "", err
	}
	return found.(string), nil
}

// discover asks every worker for a session whose worker is not recorded, and
// records the one that has it. Sessions the handler did not create (made
// without an id, forked, made by opencode itself as children, or made on a
// worker directly) and mappings written before workers were recorded are
// found this way once.
//
// The workers that are up are asked first, so a dead worker does not delay
// finding a session on a live one. When none of them has it, the workers
// that are down (a health check that timed out, a worker restarting) are
// asked again through reverse_proxy, which holds the request until the
// worker is healthy, for at most downWorkerWait: an unrecorded session on a
// worker whose health check failed once is found when the next one passes,
// not refused at once, and an id no live worker holds costs a bounded wait
// while a worker is down.
func (f *Fleet) discover(r *http.Request, next caddyhttp.Handler, realID string) (string, error) {
	path := "/session/" + url.PathEscape(realID)
	answers := upstream.AskEach(r, next, f.Workers(), http.MethodGet, path, "")
	var unavailable []string
	for _, a := range answers {
		if a.Unavailable {
			unavailable = append(unavailable, a.Worker)
		}
	}
	if len(unavailable) > 0 && !anyFound(answers) {
		ctx, cancel := context.WithTimeout(r.Context(), downWorkerWait)
		answers = append(answers, upstream.AskWaiting(r.WithContext(ctx), next, unavailable, http.MethodGet, path, "")...)
		cancel()
	}
	var down []string
	for _, a := range answers {
		switch {
		case a.Unavailable:
		case a.Err == nil && a.Answer.OK():
			if err := f.index.SaveWorker(r.Context(), realID, a.Worker); err != nil {
				return "", err
			}
			f.logger.Info("found the worker of a session", zap.String("real_id", realID), zap.String("worker", a.Worker))
			discoveries.WithLabelValues(f.namespace, "found").Inc()
			return a.Worker, nil
		case a.Err != nil || a.Answer.Status != http.StatusNotFound:
			down = append(down, a.Worker)
		}
	}
	if len(down) > 0 {
		discoveries.WithLabelValues(f.namespace, "unknown").Inc()
		return "", ErrWorkerUnknown{Session: realID, Down: down}
	}
	discoveries.WithLabelValues(f.namespace, "absent").Inc()
	f.index.MarkUnplaced(realID)
	return "", nil
}

func anyFound(answers []upstream.WorkerAnswer) bool {
	for _, a := range answers {
		if a.Err == nil && a.Answer.OK() {
			return true
		}
	}
	return false
}
