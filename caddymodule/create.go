package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/fleet"
	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/apierror"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// MetadataTag is the key under which a created session's metadata carries
// the client id. It is how a create that crashed between the upstream's
// answer and the mapping write is recognised and adopted on retry, and it
// shows operators looking at the upstream directly which client id a session
// belongs to.
const MetadataTag = "clientSessionID"

// AttemptTag is the key under which a created session's metadata carries
// the name of the create attempt that made it (idmap.Pending.Attempt): only
// a session with the id and the attempt of an interrupted create is ever
// adopted, or deleted, as that create's.
const AttemptTag = "clientSessionAttempt"

// ReplayHeader marks an answer that returns a session created earlier (and
// a replayed keyed prompt).
const ReplayHeader = upstream.ReplayHeader

// serveCreate handles POST /session and POST /api/session. Without an id in
// the body it is an ordinary create and passes through; with one, the session
// is made, found or refused under that id.
func (h *Handler) serveCreate(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	raw, ok := h.readNewSessionBody(w, r)
	if !ok {
		return nil
	}
	parse := h.parseCreate
	if r.URL.Path == "/api/session" {
		parse = h.parseCreateV2
	}
	req, ok := parse(w, r, raw)
	switch {
	case !ok:
		return nil
	case req == nil:
		return h.proxyNewSession(w, r, next, raw)
	}
	return h.createSession(w, r, next, req)
}

// readNewSessionBody reads the body of a create or a fork (nil when it has
// none) and bounds the ids it names; it answers 413 itself and returns false
// for one too large or naming too many.
func (h *Handler) readNewSessionBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	var raw []byte
	if r.Body != nil && r.Body != http.NoBody {
		var err error
		if raw, err = upstream.ReadBody(r, h.MaxBodySize); err != nil {
			upstream.BodyRefused(w, err, h.MaxBodySize)
			return nil, false
		}
	}
	if err := h.ids.CheckIDs([]byte(r.URL.RawQuery), raw); err != nil {
		upstream.BodyRefused(w, err, h.MaxBodySize)
		return nil, false
	}
	return raw, true
}

// createMapped makes, finds or refuses the session of one client id in
// mapping mode, under the id's lock so that it happens once however many
// creates of the id arrive at once.
func (h *Handler) createMapped(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *createRequest) error {
	if req.forkOf != "" {
		return h.forkMapped(w, r, next, req)
	}
	ctx := r.Context()
	log := h.logger.With(zap.String("session_id", req.id))
	lock := h.lockForCreate(w, r, next, req)
	if lock == nil {
		return nil
	}
	defer lock.unlock()
	pending := lock.pending

	if taken := h.idTaken(w, r, next, req, pending.Worker); taken {
		return nil
	}

	// Rewrite client ids in the body (parentID) and query before they go up.
	lookup := &lookupFunc{resolve: h.index.RealOf, ctx: ctx}
	if q, replaced := idmap.Replace([]byte(r.URL.RawQuery), lookup.lookup); replaced > 0 {
		r.URL.RawQuery = string(q)
	}
	attempt := idmap.NewAttempt()
	upBody, err := h.upstreamCreateBody(req, lookup, attempt)
	if err == nil && lookup.err != nil {
		err = lookup.err
	}
	if err != nil {
		h.logger.Error("session id mapping could not be read or written", zap.Error(err))
		apierror.Storage(w, "session id mapping could not be read or written")
		return nil
	}

	if lock.pendingFound {
		adopted, err := h.adoptOrphan(w, r, next, req, pending)
		if adopted || err != nil {
			return err
		}
	}
	worker := upstream.Worker(r)
	if err := h.index.Store.SavePending(ctx, idmap.Pending{ClientID: req.id, Fields: req.fields, Query: r.URL.RawQuery, Started: time.Now().UTC(), Worker: worker, Attempt: attempt}); err != nil {
		h.logger.Error("session id mapping could not be read or written", zap.Error(err))
		apierror.Storage(w, "session id mapping could not be read or written")
		return nil
	}

	endCreate := h.index.BeginCreate()
	answer, err := upstream.Ask(r, next, http.MethodPost, "/session", r.URL.RawQuery, upBody)
	if err != nil {
		endCreate()
		// The create may or may not have happened: the pending record stays,
		// and the next create of this id looks for the session before making one.
		log.Warn("upstream create failed", zap.Error(err))
		apierror.Upstream(w, upstream.FailureStatus(err), "upstream could not create the session: "+err.Error())
		return nil
	}
	if !answer.OK() {
		endCreate()
		if answer.Status < 500 { // refused: nothing was created
			_ = h.index.Store.RemovePending(ctx, req.id)
		}
		h.ids.Relay(w, r, answer, false)
		return nil
	}
	realID, err := sessionIDOf(answer.Body.Bytes())
	if err != nil {
		endCreate()
		log.Error("upstream create answered without a usable id", zap.Error(err))
		apierror.Upstream(w, http.StatusBadGateway, err.Error())
		return nil
	}
	err = h.index.Save(ctx, idmap.Mapping{ClientID: req.id, RealID: realID, Fields: req.fields, Created: time.Now().UTC(), Worker: worker})
	endCreate()
	if err != nil {
		log.Error("session created upstream but its mapping could not be stored", zap.String("real_id", realID), zap.Error(err))
		apierror.Storage(w, "the session was created but its id mapping could not be stored; retry the create to adopt it")
		return nil
	}
	if err := h.index.Store.RemovePending(ctx, req.id); err != nil {
		log.Warn("could not remove pending create record", zap.Error(err))
	}
	log.Info("session created", zap.String("real_id", realID), zap.String("worker", worker))
	h.count(sessionMetrics.creates)
	if req.v2 {
		if answer, err = h.sessionAnswer(r, next, realID, true); err != nil {
			apierror.Upstream(w, upstream.FailureStatus(err), "the session was created but could not be read back: "+err.Error())
			return nil
		}
	}
	h.ids.Relay(w, r, answer, false)
	return nil
}

// createLock is a create that holds its id's lock, with what an earlier
// attempt of it left pending, if anything.
type createLock struct {
	unlock       func()
	pending      idmap.Pending
	pendingFound bool
}

// lockForCreate takes the lock of a create's id and, if the id is mapped (or,
// in direct mode, recorded) already, answers by the duplicate policy. It
// returns the lock when the create is to go on, with the pending record an
// interrupted attempt left, and nil when it has answered. A mapping whose
// session the upstream no longer has is removed: the id is free again.
func (h *Handler) lockForCreate(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *createRequest) *createLock {
	ctx := r.Context()
	log := h.logger.With(zap.String("session_id", req.id))
	unlock, err := h.index.Lock(ctx, req.id)
	if err != nil {
		log.Error("could not lock session id", zap.Error(err))
		apierror.Storage(w, "could not lock session id "+req.id)
		return nil
	}
	m, err := h.index.Store.Load(ctx, req.id)
	switch {
	case err == nil:
		if err := h.fleet.Pin(r, next, req.id, m.Worker); err != nil {
			fleet.PlacementFailed(w, err)
			unlock()
			return nil
		}
		if h.answerDuplicate(w, r, next, req, m) {
			unlock()
			return nil
		}
		log.Warn("mapped session no longer exists upstream; creating it again", zap.String("real_id", m.RealID))
		if err := h.index.Remove(ctx, m); err != nil {
			h.logger.Error("could not remove a stale mapping", zap.Error(err))
			apierror.Storage(w, "could not remove a stale mapping")
			unlock()
			return nil
		}
	case !errors.Is(err, idmap.ErrNotFound):
		log.Error("could not read mapping", zap.Error(err))
		apierror.Storage(w, "session id mapping could not be read")
		unlock()
		return nil
	}
	pending, err := h.index.Store.LoadPending(ctx, req.id)
	if err != nil && !errors.Is(err, idmap.ErrNotFound) {
		h.logger.Error("pending create could not be read", zap.Error(err))
		apierror.Storage(w, "pending create could not be read")
		unlock()
		return nil
	}
	return &createLock{unlock: unlock, pending: pending, pendingFound: err == nil}
}

// answerDuplicate answers a create of an id that is mapped already, by the
// duplicate policy. It returns false without answering when the mapped
// session no longer exists upstream.
func (h *Handler) answerDuplicate(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *createRequest, m idmap.Mapping) bool {
	decision := h.duplicates.Decide(m.Fields, req.fields)
	if !decision.Replay {
		h.count(sessionMetrics.conflicts)
		if len(decision.Differ) > 0 {
			apierror.Conflict(w, req.id, fmt.Sprintf("session %s exists with a different %s", req.id, strings.Join(decision.Differ, ", ")), decision.Differ)
		} else {
			apierror.Conflict(w, req.id, fmt.Sprintf("session %s already exists", req.id), nil)
		}
		return true
	}
	answer, err := h.sessionAnswer(r, next, m.RealID, req.v2)
	if err != nil {
		apierror.Upstream(w, upstream.FailureStatus(err), "upstream could not be asked for the existing session: "+err.Error())
		return true
	}
	if answer.Status == http.StatusNotFound {
		return false
	}
	if answer.OK() {
		h.count(sessionMetrics.replays)
	}
	h.ids.Relay(w, r, answer, answer.OK())
	return true
}

// idTaken answers 409 when the client id is already a session of its own
// on a worker, or the real id of a mapped one: mapping it would make the id
// mean two sessions. On the way it places the create (see placeCreate). It
// reports true when it answered.
func (h *Handler) idTaken(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *createRequest, preferred string) bool {
	id := req.id
	_, err := h.index.Store.ClientOf(r.Context(), id)
	if err == nil {
		h.count(sessionMetrics.conflicts)
		apierror.Conflict(w, id, fmt.Sprintf("session id %s is already used by another session", id), nil)
		return true
	}
	if !errors.Is(err, idmap.ErrNotFound) {
		h.logger.Error("session id mapping could not be read", zap.Error(err))
		apierror.Storage(w, "session id mapping could not be read")
		return true
	}
	answer, err := h.fleet.Place(r, next, req.id, req.placedWith(), preferred)
	if err != nil {
		fleet.PlacementFailed(w, err)
		return true
	}
	switch {
	case answer.OK():
		h.count(sessionMetrics.conflicts)
		apierror.Conflict(w, id, fmt.Sprintf("session id %s is already used by an upstream session", id), nil)
		return true
	case answer.Status != http.StatusNotFound:
		h.ids.Relay(w, r, answer, false)
		return true
	}
	return false
}

// upstreamCreateBody is the create body the upstream gets: the client's,
// without id, with client ids rewritten, and with the client id and the
// attempt tagged into metadata.
func (h *Handler) upstreamCreateBody(req *createRequest, lookup *lookupFunc, attempt string) ([]byte, error) {
	body := make(map[string]json.RawMessage, len(req.body)+1)
	for k, v := range req.body {
		body[k] = v
	}
	meta := map[string]json.RawMessage{}
	if raw, ok := body["metadata"]; ok {
		if err := json.Unmarshal(raw, &meta); err != nil {
			return nil, err
		}
	}
	tag, _ := json.Marshal(req.id)
	meta[MetadataTag] = tag
	meta[AttemptTag], _ = json.Marshal(attempt)
	rawMeta, err := json.Marshal(meta)
	if err != nil {
		return nil, err
	}
	body["metadata"] = rawMeta
	out, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	out, _ = idmap.Replace(out, lookup.lookup)
	return out, nil
}

// sessionIDOf reads the id of a session object and checks that the rewriter
// can recognise it.
func sessionIDOf(body []byte) (string, error) {
	var session struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(body, &session); err != nil {
		return "", fmt.Errorf("upstream session is not JSON: %w", err)
	}
	if !idmap.IsToken(session.ID) {
		return "", fmt.Errorf("upstream session id %q cannot be mapped", session.ID)
	}
	return session.ID, nil
}
