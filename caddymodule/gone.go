package caddymodule

import (
	"bytes"
	"errors"
	"net/http"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/internal/apierror"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
	"github.com/sessionid/caddy-sessionid/relocation"
)

// goneAware is the rest of the route (reverse_proxy) as every request of a
// client's, and of the module's own for a client, reaches it: a request
// for a session sent to the worker the index records it on, answered 404,
// is a session that worker may have lost (a new process on its address, its
// data gone). Then the worker is asked for the session itself; if it does
// not have it, the session is made again from its journal
// (relocation.RehomeGone), on a healthy worker, and the request is sent
// there. Without a journal to make it from, the 404 says why. A session the
// worker has (the 404 was of a message in it, say) gets the 404 as it came.
//
// Never an empty session in its place: create_missing leaves mapped ids
// alone, and an explicit create of the id gets the re-homed session.
type goneAware struct {
	h    *Handler
	next caddyhttp.Handler
}

// heldNotFound bounds the 404 held back while the session is looked at:
// opencode's are a few hundred bytes; a larger one passes as it comes.
const heldNotFound = 16 << 10

func (g goneAware) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	rt := upstream.RouteOf(r)
	if rt == nil || rt.Worker == "" {
		return g.next.ServeHTTP(w, r) // one worker, or no session: the 404 is the upstream's
	}
	start, end, ok := sessionSegment(r.URL.Path)
	if !ok || r.Method == http.MethodDelete && isSessionItem(r.URL.Path) {
		// A delete of a session its worker lost is done: serveDelete
		// removes its mapping and its journal.
		return g.next.ServeHTTP(w, r)
	}
	realID, worker := r.URL.Path[start:end], rt.Worker
	before := w.Header().Clone()
	watch := &notFoundWatch{w: w}
	err := g.next.ServeHTTP(watch, r)
	if !watch.held {
		return err
	}
	if g.h.index.RecordedWorker(r.Context(), realID) != worker {
		// Through the cache: a worker asked for a session it was never
		// recorded with (the search for an unknown id) costs nothing more.
		return watch.release()
	}
	to, gerr := g.h.relocator.RehomeGone(r.Context(), realID, worker)
	var gone relocation.GoneError
	switch {
	case errors.As(gerr, &gone):
		resetHeader(w, before)
		g.h.logger.Warn("a session's worker no longer has it, and it cannot be made again", zap.String("worker", worker), zap.Error(gerr))
		apierror.Write(w, http.StatusNotFound, "NotFoundError", gone.Error(), map[string]any{"sessionID": gone.Session})
		return nil
	case gerr != nil || to == worker:
		if gerr != nil && !errors.Is(gerr, relocation.ErrNotRecordedThere) {
			g.h.logger.Error("could not tell whether a worker lost a session", zap.String("real_id", realID), zap.String("worker", worker), zap.Error(gerr))
		}
		return watch.release()
	}
	resetHeader(w, before)
	rt.Worker = to
	if r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody {
		if r.GetBody == nil {
			// Read already, and not kept: the client sends it again.
			w.Header().Set("Retry-After", "0")
			apierror.Upstream(w, http.StatusServiceUnavailable, "session "+rt.Session+" was made again on worker "+to+" from its journal (its worker no longer had it); send the request again")
			return nil
		}
		body, err := r.GetBody()
		if err != nil {
			return err
		}
		r.Body = body
	}
	return g.next.ServeHTTP(w, r)
}

// resetHeader gives w the header it had before a response that was held
// back, and is not sent, wrote to it.
func resetHeader(w http.ResponseWriter, before http.Header) {
	h := w.Header()
	for k := range h {
		delete(h, k)
	}
	for k, v := range before {
		h[k] = v
	}
}

// notFoundWatch passes a response on as it comes, but holds back a 404
// (up to heldNotFound bytes) until release.
type notFoundWatch struct {
	w       http.ResponseWriter
	held    bool // a 404 is held back
	written bool // the response went (or is going) to w
	body    bytes.Buffer
}

func (n *notFoundWatch) Header() http.Header { return n.w.Header() }

func (n *notFoundWatch) WriteHeader(status int) {
	switch {
	case n.held || n.written:
	case status < 200:
		n.w.WriteHeader(status) // informational: the real one follows
	case status == http.StatusNotFound:
		n.held = true
	default:
		n.written = true
		n.w.WriteHeader(status)
	}
}

func (n *notFoundWatch) Write(p []byte) (int, error) {
	if !n.held && !n.written {
		n.WriteHeader(http.StatusOK)
	}
	if n.held {
		if n.body.Len()+len(p) <= heldNotFound {
			return n.body.Write(p)
		}
		if err := n.release(); err != nil {
			return 0, err
		}
	}
	return n.w.Write(p)
}

// release sends the held 404 on.
func (n *notFoundWatch) release() error {
	n.held, n.written = false, true
	n.w.WriteHeader(http.StatusNotFound)
	_, err := n.w.Write(n.body.Bytes())
	return err
}

// FlushError flushes what went through; a held 404 waits.
func (n *notFoundWatch) FlushError() error {
	if n.held {
		return nil
	}
	return http.NewResponseController(n.w).Flush()
}

func (n *notFoundWatch) Unwrap() http.ResponseWriter { return n.w }
