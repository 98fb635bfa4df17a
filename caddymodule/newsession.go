package caddymodule

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/apierror"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// proxyNewSession forwards a request that makes a session under an id the
// upstream picks (a create without an id, a fork), and with several workers
// records which worker made it, so that its requests never need to ask every
// worker. A child goes to its parent's worker. The answer is relayed with its
// ids rewritten, as on any response.
//
// A fork is answered, and kept, without the tags of the session it was
// forked from: opencode copies a session's metadata to its forks, and a
// fork must not name its parent's client id or create attempt.
func (h *Handler) proxyNewSession(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, raw []byte) error {
	fork := strings.HasSuffix(r.URL.Path, "/fork")
	h.fleet.Learn(r, next)
	several := h.fleet.Several()
	if !several && !fork {
		return h.proxy(w, r, next, raw)
	}
	rt := upstream.RouteOf(r)
	if parent := parentIDOf(raw); several && parent != "" && rt.Worker == "" {
		// A child goes to its parent's worker, and is a change of the
		// parent: a move of the parent waits for it, or it for the move.
		if !h.fleet.Route(w, r, next, rt, parent) {
			return nil
		}
	}
	if raw == nil && r.Body != nil && r.Body != http.NoBody {
		var err error
		if raw, err = upstream.ReadBody(r, h.MaxBodySize); err != nil {
			upstream.BodyRefused(w, err, h.MaxBodySize)
			return nil
		}
	}
	if fork && h.Mode == ModeMapping {
		unlock, ok := h.lockFork(w, r)
		if !ok {
			return nil
		}
		defer unlock()
	}
	if !h.ids.Request(w, r, raw) {
		return nil
	}
	raw = nil // the body as the translator left it
	if r.Body != nil {
		raw, _ = io.ReadAll(r.Body)
	}
	if len(raw) == 0 {
		raw = nil
	}
	answer, asked, err := upstream.AskWorker(r, next, rt.Worker, r.Method, r.URL.Path, r.URL.RawQuery, raw)
	if err != nil {
		if rt.Worker != "" {
			h.fleet.WorkerFailed(w, rt, err)
		} else {
			apierror.Upstream(w, upstream.FailureStatus(err), "upstream could not create the session: "+err.Error())
		}
		return nil
	}
	_, chosen := asked.Outcome()
	if several && answer.OK() && chosen != "" {
		if id := newSessionIDOf(answer.Body.Bytes()); id != "" {
			if err := h.index.SaveWorker(r.Context(), id, chosen); err != nil {
				// The session exists; its worker will be found by asking.
				h.logger.Warn("could not record the worker of a new session", zap.String("real_id", id), zap.Error(err))
			}
		}
	}
	if fork && answer.OK() {
		if chosen == "" {
			chosen = rt.Worker
		}
		// Out of the running when an interrupted fork under an id looks
		// for its own (adoptFork), and moved with its parent (relocation).
		// The path names the parent by its real id by now.
		if id := newSessionIDOf(answer.Body.Bytes()); id != "" {
			start, end, _ := sessionSegment(r.URL.Path)
			if err := h.index.Store.SaveForked(r.Context(), id, r.URL.Path[start:end]); err != nil {
				h.logger.Warn("could not record a fork", zap.String("real_id", id), zap.Error(err))
			}
		}
		if untagged, err := h.tagFork(r, next, chosen, answer, "", ""); err == nil {
			answer = untagged
		} else {
			// It still names its parent's client id; an interrupted create
			// of that id will not adopt it, whose attempt it lacks.
			h.logger.Warn("a fork keeps the tags of the session it was forked from", zap.String("real_id", newSessionIDOf(answer.Body.Bytes())), zap.Error(err))
		}
	}
	h.ids.Relay(w, r, answer, false)
	return nil
}

// lockFork takes the fork lock of the session a fork request names (see
// forkMapped): forks of one session through the proxy are made one at a
// time, so an interrupted fork under a chosen id can be told apart from
// the others.
func (h *Handler) lockFork(w http.ResponseWriter, r *http.Request) (func(), bool) {
	start, end, _ := sessionSegment(r.URL.Path)
	parent := r.URL.Path[start:end]
	real, mapped, err := h.index.RealOf(r.Context(), parent)
	if err == nil && !mapped {
		real = parent
	}
	var unlock func()
	if err == nil {
		unlock, err = h.index.Lock(r.Context(), idmap.ForkLockName(real))
	}
	if err != nil {
		h.logger.Error("could not lock the session forked", zap.String("session_id", parent), zap.Error(err))
		apierror.Storage(w, "could not lock session id "+parent)
		return nil, false
	}
	return unlock, true
}

// parentIDOf reads parentID from a JSON create body, if it has one.
func parentIDOf(raw []byte) string {
	var body struct {
		ParentID string `json:"parentID"`
	}
	_ = json.Unmarshal(raw, &body)
	return body.ParentID
}

// newSessionIDOf reads the id of a session in a v1 ({…}) or v2
// ({"data": {…}}) answer.
func newSessionIDOf(body []byte) string {
	var s struct {
		ID   string `json:"id"`
		Data struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if json.Unmarshal(body, &s) != nil {
		return ""
	}
	if s.ID == "" {
		s.ID = s.Data.ID
	}
	if !idmap.IsToken(s.ID) {
		return ""
	}
	return s.ID
}
