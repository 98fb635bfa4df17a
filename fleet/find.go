package fleet

import (
	"context"
	"fmt"
	"net/http"
	"net/url"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

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
func (f *Fleet) WorkerOf(r *http.Request, next caddyhttp.Handler, id string) (string, error) {
	ctx := r.Context()
	realID, worker, mapped, err := f.index.Route(ctx, id)
	if err != nil {
		return "", err
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
func (f *Fleet) discover(r *http.Request, next caddyhttp.Handler, realID string) (string, error) {
	answers := upstream.AskEach(r, next, f.Workers(), http.MethodGet, "/session/"+url.PathEscape(realID), "")
	var down []string
	for _, a := range answers {
		switch {
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
