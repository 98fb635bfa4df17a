package caddymodule

import (
	"bytes"
	"context"
	"net/http"
	"regexp"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// ids is how the ids of requests and answers cross the handler: the one
// place where mapping and direct mode differ in what they do to a request,
// an answer or an event. mappedIDs rewrites client ids into the upstream's
// and back; directIDs passes them as they are, because the upstream honours
// the client's ids itself. The subsystems get this translator, not the mode
// (events.IDs, idempotency.IDs).
type ids interface {
	// Mode names the translator: ModeMapping or ModeDirect.
	Mode() string
	// UpstreamID is the upstream's id of a client's session id (an id the
	// handler did not map is the upstream's own).
	UpstreamID(ctx context.Context, id string) (string, error)
	// ToUpstream rewrites the client ids in a body or query.
	ToUpstream(ctx context.Context, b []byte) ([]byte, error)
	// CheckIDs refuses (with an upstream.TooManyIDsError) a query and body
	// that name more distinct ids than one request may have looked up.
	CheckIDs(parts ...[]byte) error
	// Query rewrites the ids of a request's query alone (a websocket's, whose
	// body is not a request body). It answers the client itself and returns
	// false when the request cannot be forwarded.
	Query(w http.ResponseWriter, r *http.Request) bool
	// Request prepares a request to be forwarded: its ids in the session
	// segment of its path, its query and its body (body if the caller has
	// read it, else read here when it may carry ids). It answers the client
	// itself and returns false when the request cannot be forwarded.
	Request(w http.ResponseWriter, r *http.Request, body []byte) bool
	// Response returns the writer a forwarded response goes through so that
	// the client gets its own ids, or nil when it passes as it comes.
	Response(w http.ResponseWriter, r *http.Request) *rewritingWriter
	// Relay answers the client with an answer the handler fetched itself,
	// its ids rewritten like any forwarded response; replayed marks it
	// Idempotent-Replayed.
	Relay(w http.ResponseWriter, r *http.Request, answer *upstream.Answer, replayed bool)
	// Event returns one whole event of a stream with the client's ids.
	Event(ctx context.Context, ev []byte) []byte
}

// directIDs is the translator of direct mode: ids are the upstream's own.
type directIDs struct{ h *Handler }

func (directIDs) Mode() string { return ModeDirect }

func (directIDs) UpstreamID(_ context.Context, id string) (string, error) { return id, nil }

func (directIDs) ToUpstream(_ context.Context, b []byte) ([]byte, error) { return b, nil }

func (directIDs) CheckIDs(...[]byte) error { return nil }

func (directIDs) Query(http.ResponseWriter, *http.Request) bool { return true }

func (directIDs) Request(_ http.ResponseWriter, r *http.Request, body []byte) bool {
	if body != nil {
		upstream.SetBody(r, body)
	}
	return true
}

func (directIDs) Response(http.ResponseWriter, *http.Request) *rewritingWriter { return nil }

func (directIDs) Relay(w http.ResponseWriter, _ *http.Request, answer *upstream.Answer, replayed bool) {
	writeAnswer(w, answer, answer.Body.Bytes(), replayed)
}

func (t directIDs) Event(ctx context.Context, ev []byte) []byte {
	if t.h != nil {
		if instead, moved := t.h.movedAway(ctx, ev); moved {
			return instead
		}
	}
	return ev
}

// writeAnswer writes an answer with body as its body.
func writeAnswer(w http.ResponseWriter, answer *upstream.Answer, body []byte, replayed bool) {
	header := w.Header()
	for _, name := range []string{"Content-Type", "Vary", "Cache-Control", "Www-Authenticate", "Retry-After"} {
		if v := answer.Header().Values(name); len(v) > 0 {
			header[name] = v
		}
	}
	if replayed {
		header.Set(upstream.ReplayHeader, "true")
	}
	header.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(answer.Status)
	_, _ = w.Write(body)
}

// lookupFunc adapts an index lookup to the rewriter, remembering the first
// storage error so the caller can refuse the request instead of passing an
// id through unrewritten.
type lookupFunc struct {
	resolve func(ctx context.Context, id string) (string, bool, error)
	ctx     context.Context
	err     error
}

func (l *lookupFunc) lookup(token []byte) (string, bool) {
	id, ok, err := l.resolve(l.ctx, string(token))
	if err != nil && l.err == nil {
		l.err = err
	}
	return id, ok && err == nil
}

// followWait bounds how long an event stream waits for another instance to
// store the mapping of a session whose creation it is announcing.
const followWait = 3 * time.Second

// createdWithClientID finds, in a session.created event (or the sync event
// that carries it on /global/event), the session's real id and the client
// id its metadata names.
var createdWithClientID = regexp.MustCompile(`"sessionID":"(ses_[A-Za-z0-9_-]+)".*"clientSessionID":"(ses_[A-Za-z0-9_-]+)"`)

// followCreate makes sure the mapping of a session this event announces is
// known here before the event is rewritten. On one Caddy it always is (a
// lookup waits for the create in flight); with several sharing storage, the
// event can arrive while another instance is still storing the mapping, and
// the new real id would otherwise pass unrewritten and be remembered as
// unmapped for negative_ttl.
//
// It returns the event with a copied tag corrected: opencode copies a
// session's metadata to its forks, so a fork's session.created names its
// parent's client id. A tag that does not name the session it is on is
// replaced by the session's own id, which the rewrite then turns into the
// fork's client id (or leaves as the id of a fork without one): no fork is
// ever announced under another session's client id.
func (h *Handler) followCreate(ctx context.Context, ev []byte) []byte {
	if !bytes.Contains(ev, []byte(`"type":"session.created`)) || !bytes.Contains(ev, []byte(`"clientSessionID"`)) {
		return ev
	}
	m := createdWithClientID.FindSubmatch(ev)
	if m == nil {
		return ev
	}
	// Followed even when the real id is known here already: a "not mapped"
	// this instance cached for the client id (a request that came too
	// early) goes too. A create is one storage read.
	realID, clientID := string(m[1]), string(m[2])
	ours, err := h.index.Follow(ctx, clientID, realID, followWait)
	if err != nil {
		h.logger.Warn("could not follow a create announced on an event stream", zap.String("client_id", clientID), zap.String("real_id", realID), zap.Error(err))
		return ev
	}
	if ours || clientID == realID {
		return ev
	}
	return bytes.ReplaceAll(ev, []byte(`"clientSessionID":"`+clientID+`"`), []byte(`"clientSessionID":"`+realID+`"`))
}

// Interface guards
var (
	_ ids = directIDs{}
	_ ids = mappedIDs{}
)
