package caddymodule

import (
	"context"
	"net/http"
	"strings"

	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/events"
	"github.com/sessionid/caddy-sessionid/idempotency"
	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/apierror"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// mappedIDs is the translator of mapping mode: client ids are mapped to the
// upstream's own and rewritten both ways, through the handler's index.
type mappedIDs struct{ h *Handler }

func (mappedIDs) Mode() string { return ModeMapping }

func (t mappedIDs) UpstreamID(ctx context.Context, id string) (string, error) {
	realID, mapped, err := t.h.index.RealOf(ctx, id)
	if err != nil || !mapped {
		return id, err
	}
	return realID, nil
}

func (t mappedIDs) ToUpstream(ctx context.Context, b []byte) ([]byte, error) {
	lookup := &lookupFunc{resolve: t.h.index.RealOf, ctx: ctx}
	out, _ := idmap.Replace(b, lookup.lookup)
	return out, lookup.err
}

// CheckIDs refuses what names more distinct ids than a request may have
// looked up (max_ids_per_body), before any is.
func (t mappedIDs) CheckIDs(parts ...[]byte) error {
	if idmap.TooManyTokens(t.h.MaxIDsPerBody, parts...) {
		return upstream.TooManyIDsError{Max: t.h.MaxIDsPerBody}
	}
	return nil
}

func (t mappedIDs) Query(w http.ResponseWriter, r *http.Request) bool {
	if !strings.Contains(r.URL.RawQuery, idmap.Prefix) {
		return true
	}
	if err := t.CheckIDs([]byte(r.URL.RawQuery)); err != nil {
		upstream.BodyRefused(w, err, t.h.MaxBodySize)
		return false
	}
	lookup := &lookupFunc{resolve: t.h.index.RealOf, ctx: r.Context()}
	if q, replaced := idmap.Replace([]byte(r.URL.RawQuery), lookup.lookup); replaced > 0 {
		r.URL.RawQuery = string(q)
		r.RequestURI = r.URL.RequestURI()
	}
	if lookup.err != nil {
		t.h.logger.Error("mapping lookup failed", zap.Error(lookup.err))
		apierror.Storage(w, "session id mapping could not be read")
		return false
	}
	return true
}

func (t mappedIDs) Request(w http.ResponseWriter, r *http.Request, body []byte) bool {
	h := t.h
	ctx := r.Context()
	lookup := &lookupFunc{resolve: h.index.RealOf, ctx: ctx}

	if body == nil && rewritableBody(r) {
		var err error
		if body, err = upstream.ReadBody(r, h.MaxBodySize); err != nil {
			upstream.BodyRefused(w, err, h.MaxBodySize)
			return false
		}
	}
	if err := t.CheckIDs([]byte(r.URL.RawQuery), body); err != nil {
		upstream.BodyRefused(w, err, h.MaxBodySize)
		return false
	}

	if err := rewriteSessionPath(r.URL, func(id string) (string, bool, error) { return h.index.RealOf(ctx, id) }); err != nil {
		h.logger.Error("mapping lookup failed", zap.Error(err))
		apierror.Storage(w, "session id mapping could not be read")
		return false
	}

	if strings.Contains(r.URL.RawQuery, idmap.Prefix) {
		if q, replaced := idmap.Replace([]byte(r.URL.RawQuery), lookup.lookup); replaced > 0 {
			r.URL.RawQuery = string(q)
		}
	}

	if body != nil {
		rewritten, replaced := idmap.Replace(body, lookup.lookup)
		h.countRewrite("request", len(body), replaced)
		upstream.SetBody(r, rewritten)
		r.TransferEncoding = nil
	}

	if lookup.err != nil {
		h.logger.Error("mapping lookup failed", zap.Error(lookup.err))
		apierror.Storage(w, "session id mapping could not be read")
		return false
	}
	r.RequestURI = r.URL.RequestURI()
	// Ids in responses can be rewritten only in bytes the handler can read.
	r.Header.Del("Accept-Encoding")
	return true
}

func (t mappedIDs) Response(w http.ResponseWriter, r *http.Request) *rewritingWriter {
	if r.Method == http.MethodHead {
		// No body to rewrite, and its Content-Length must stay the GET's.
		return nil
	}
	h := t.h
	return &rewritingWriter{
		w:         w,
		lookup:    &lookupFunc{resolve: h.index.ClientOf, ctx: r.Context()},
		maxBuffer: h.MaxBufferSize,
		report:    func(bytes int, ids int64) { h.countRewrite("response", bytes, ids) },
	}
}

func (t mappedIDs) Relay(w http.ResponseWriter, r *http.Request, answer *upstream.Answer, replayed bool) {
	lookup := &lookupFunc{resolve: t.h.index.ClientOf, ctx: r.Context()}
	body, _ := idmap.Replace(answer.Body.Bytes(), lookup.lookup)
	if lookup.err != nil {
		t.h.logger.Error("mapping lookup failed while rewriting a response", zap.Error(lookup.err))
	}
	writeAnswer(w, answer, body, replayed)
}

func (t mappedIDs) Event(ctx context.Context, ev []byte) []byte {
	h := t.h
	if instead, moved := h.movedAway(ctx, ev); moved {
		ev = instead
		if ev == nil {
			return nil
		}
	} else {
		ev = h.followCreate(ctx, ev)
	}
	lookup := &lookupFunc{resolve: h.index.ClientOf, ctx: ctx}
	ev, ids := idmap.Replace(ev, lookup.lookup)
	h.countRewrite("response", len(ev), ids)
	if lookup.err != nil {
		h.logger.Error("mapping lookup failed while rewriting an event", zap.Error(lookup.err))
	}
	return ev
}

// Interface guards: the subsystems take the translator.
var (
	_ events.IDs      = mappedIDs{}
	_ events.IDs      = directIDs{}
	_ idempotency.IDs = mappedIDs{}
	_ idempotency.IDs = directIDs{}
)
