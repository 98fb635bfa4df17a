package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/apierror"
	"github.com/sessionid/caddy-sessionid/internal/forktitle"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// serveFork handles POST /session/{id}/fork. Without an id in the body it is
// an ordinary fork, under an id the upstream picks; with one, the fork is
// made, found or refused under that id exactly as a create is: the id
// grammar, the duplicate policy (forkOf and messageID are its fields) and
// exactly once, through crashes.
func (h *Handler) serveFork(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	raw, ok := h.readNewSessionBody(w, r)
	if !ok {
		return nil
	}
	req, ok := h.parseFork(w, r, raw)
	switch {
	case !ok:
		return nil
	case req == nil:
		return h.proxyNewSession(w, r, next, raw)
	}
	return h.createSession(w, r, next, req)
}

// parseFork validates a fork body. It returns nil for a fork without an id,
// and answers 400 itself for a bad body or id.
func (h *Handler) parseFork(w http.ResponseWriter, r *http.Request, raw []byte) (*createRequest, bool) {
	body, id, ok := h.decodeCreate(w, raw)
	if body == nil || !ok {
		return nil, ok
	}
	if v, ok := body["messageID"]; ok {
		var messageID string
		if json.Unmarshal(v, &messageID) != nil {
			apierror.BadRequest(w, "messageID must be a string", map[string]any{"field": "messageID"})
			return nil, false
		}
	}
	start, end, _ := sessionSegment(r.URL.Path)
	parent := r.URL.Path[start:end]
	location := requestLocation(r)
	return &createRequest{id: id, body: body, forkOf: parent, directory: location["directory"],
		fields: idmap.NewForkFields(parent, body["messageID"], location)}, true
}

// forkMapped makes, finds or refuses the fork of one client id in mapping
// mode. It holds the id's lock, as a create does, and the fork lock of the
// session forked, so that of the forks of one session made through the
// proxy only this one can be in flight.
//
// The upstream's fork copies the parent's metadata, its tags among them, so
// the fork is tagged with its own client id and attempt (a PATCH of its
// metadata) before its mapping is stored, and its id is written into the
// pending record before that. A retry after a crash adopts the fork the
// record names; after a crash before the record, the one fork that can be
// it, by elimination (see adoptFork).
func (h *Handler) forkMapped(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *createRequest) error {
	ctx := r.Context()
	log := h.logger.With(zap.String("session_id", req.id), zap.String("fork_of", req.forkOf))
	lock := h.lockForCreate(w, r, next, req)
	if lock == nil {
		return nil
	}
	defer lock.unlock()
	pending := lock.pending

	if taken := h.idTaken(w, r, next, req, pending.Worker); taken {
		return nil
	}
	parent, mapped, err := h.index.RealOf(ctx, req.forkOf)
	if err != nil {
		h.logger.Error("session id mapping could not be read", zap.Error(err))
		apierror.Storage(w, "session id mapping could not be read")
		return nil
	}
	if !mapped {
		parent = req.forkOf // a session made without an id: its id is its own
	}
	unlockParent, err := h.index.Lock(ctx, idmap.ForkLockName(parent))
	if err != nil {
		log.Error("could not lock the session forked", zap.Error(err))
		apierror.Storage(w, "could not lock session id "+req.forkOf)
		return nil
	}
	defer unlockParent()

	lookup := &lookupFunc{resolve: h.index.RealOf, ctx: ctx}
	if q, replaced := idmap.Replace([]byte(r.URL.RawQuery), lookup.lookup); replaced > 0 {
		r.URL.RawQuery = string(q)
	}
	upBody, _ := json.Marshal(req.body)
	upBody, _ = idmap.Replace(upBody, lookup.lookup)
	if lookup.err != nil {
		h.logger.Error("session id mapping could not be read", zap.Error(lookup.err))
		apierror.Storage(w, "session id mapping could not be read")
		return nil
	}

	offers, err := h.features(r, next)
	if err != nil {
		apierror.Upstream(w, upstream.FailureStatus(err), "upstream could not be asked what it supports: "+err.Error())
		return nil
	}
	if lock.pendingFound {
		adopted, err := h.adoptFork(w, r, next, req, pending, parent, offers)
		if adopted || err != nil {
			return err
		}
	}
	attempt := idmap.Pending{ClientID: req.id, Fields: req.fields, Query: r.URL.RawQuery, Started: time.Now().UTC(), Worker: upstream.Worker(r), Attempt: idmap.NewAttempt()}
	if err := h.index.Store.SavePending(ctx, attempt); err != nil {
		h.logger.Error("session id mapping could not be read or written", zap.Error(err))
		apierror.Storage(w, "session id mapping could not be read or written")
		return nil
	}

	endCreate := h.index.BeginCreate()
	answer, err := upstream.Ask(r, next, http.MethodPost, "/session/"+url.PathEscape(parent)+"/fork", r.URL.RawQuery, upBody)
	if err == nil && answer.OK() {
		return h.finishFork(w, r, next, req, answer, attempt, offers, endCreate)
	}
	endCreate()
	if err != nil {
		log.Warn("upstream fork failed", zap.Error(err))
		apierror.Upstream(w, upstream.FailureStatus(err), "upstream could not fork the session: "+err.Error())
		return nil
	}
	if answer.Status < 500 { // refused: nothing was made
		_ = h.index.Store.RemovePending(ctx, req.id)
	}
	h.ids.Relay(w, r, answer, false)
	return nil
}

// finishFork records, tags and maps the fork the upstream made. The fork's
// id goes into the pending record first, so that from then on a retry
// adopts that session and no other, and a fork record keeps it out of any
// other fork's elimination (see adoptFork). endCreate ends the create in
// flight once the mapping is stored (or cannot be).
func (h *Handler) finishFork(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *createRequest, answer *upstream.Answer, attempt idmap.Pending, offers features, endCreate func()) error {
	ctx := r.Context()
	log := h.logger.With(zap.String("session_id", req.id), zap.String("fork_of", req.forkOf))
	fork, err := sessionIDOf(answer.Body.Bytes())
	if err != nil {
		endCreate()
		log.Error("upstream fork answered without a usable id", zap.Error(err))
		apierror.Upstream(w, http.StatusBadGateway, err.Error())
		return nil
	}
	if afterFork != nil {
		afterFork()
	}
	attempt.RealID = fork
	if err := h.index.Store.SavePending(ctx, attempt); err != nil {
		endCreate()
		log.Error("the fork was made but could not be recorded", zap.String("real_id", fork), zap.Error(err))
		apierror.Storage(w, "the session was forked but the fork could not be recorded; retry the fork to finish it")
		return nil
	}
	if err := h.index.Store.SaveForked(ctx, fork, h.realIDOf(ctx, req.forkOf)); err != nil {
		log.Warn("could not record a fork", zap.String("real_id", fork), zap.Error(err))
	}
	tagged := answer
	if offers.metadata {
		// An upstream that keeps no metadata (opencode 1.15) copies none.
		if tagged, err = h.tagFork(r, next, attempt.Worker, answer, req.id, attempt.Attempt); err != nil {
			endCreate()
			log.Warn("the fork could not be tagged with its id", zap.String("real_id", fork), zap.Error(err))
			apierror.Upstream(w, upstream.FailureStatus(err), "the session was forked but could not be tagged with its id; retry the fork to finish it: "+err.Error())
			return nil
		}
	}
	if h.mapFork(w, r, req, fork, attempt.Worker, tagged, endCreate) {
		log.Info("session forked", zap.String("real_id", fork), zap.String("worker", attempt.Worker))
	}
	return nil
}

// mapFork stores the mapping of a fork that carries its own tags, drops the
// pending record and answers with the fork; done runs once the mapping is
// stored or has failed, before the answer goes out. It reports whether the
// fork was mapped.
func (h *Handler) mapFork(w http.ResponseWriter, r *http.Request, req *createRequest, fork, worker string, answer *upstream.Answer, done func()) bool {
	ctx := r.Context()
	err := h.index.Save(ctx, idmap.Mapping{ClientID: req.id, RealID: fork, Fields: req.fields, Created: time.Now().UTC(), Worker: worker})
	done()
	if err != nil {
		h.logger.Error("session forked upstream but its mapping could not be stored", zap.String("session_id", req.id), zap.String("real_id", fork), zap.Error(err))
		apierror.Storage(w, "the session was forked but its id mapping could not be stored; retry the fork to adopt it")
		return false
	}
	if err := h.index.Store.RemovePending(ctx, req.id); err != nil {
		h.logger.Warn("could not remove pending create record", zap.String("session_id", req.id), zap.Error(err))
	}
	h.count(sessionMetrics.creates)
	h.ids.Relay(w, r, answer, false)
	return true
}

// tagFork sets a fork's tags, upstream: the client id and create attempt
// it is made under (none for a fork without an id), in place of those it
// copied from its parent; the rest of its metadata stays. It returns the
// fork as the upstream answers the change.
func (h *Handler) tagFork(r *http.Request, next caddyhttp.Handler, worker string, answer *upstream.Answer, clientID, attempt string) (*upstream.Answer, error) {
	var fork struct {
		ID       string                     `json:"id"`
		Metadata map[string]json.RawMessage `json:"metadata"`
	}
	if err := json.Unmarshal(answer.Body.Bytes(), &fork); err != nil || !idmap.IsToken(fork.ID) {
		return nil, caddyhttp.Error(http.StatusBadGateway, errors.New("the upstream's fork is not a session"))
	}
	meta := fork.Metadata
	if meta == nil {
		meta = map[string]json.RawMessage{}
	}
	_, tagged := meta[MetadataTag]
	_, tried := meta[AttemptTag]
	if clientID == "" && !tagged && !tried {
		return answer, nil
	}
	delete(meta, MetadataTag)
	delete(meta, AttemptTag)
	if clientID != "" {
		meta[MetadataTag] = json.RawMessage(quoted(clientID))
		meta[AttemptTag] = json.RawMessage(quoted(attempt))
	}
	body, _ := json.Marshal(map[string]any{"metadata": meta})
	patched, _, err := upstream.AskWorker(r, next, worker, http.MethodPatch, "/session/"+url.PathEscape(fork.ID), "", body)
	if err != nil {
		return nil, err
	}
	if !patched.OK() {
		return nil, caddyhttp.Error(http.StatusBadGateway, errors.New("the upstream answered "+http.StatusText(patched.Status)+" to the change of the fork's metadata"))
	}
	return patched, nil
}

// adoptFork finishes a fork of the client id that an earlier attempt left
// pending. It reports true when it answered.
//
// An attempt that got the upstream's answer wrote the fork's id into its
// pending record: that session is the attempt's fork, and no other. It is
// tagged and mapped when it was asked for with the fields asked for now,
// deleted otherwise; when it is gone, the fork is made again.
//
// An attempt that stopped before (a crash between the upstream's fork and
// the record) left a fork that carries its parent's metadata, as every fork
// of that parent does. It is the one session that is
//   - not the parent, mapped to no client id, and not a fork the handler
//     recorded (a fork without an id, or under another id);
//   - titled as opencode titles a fork of the parent (forktitle.Next);
//   - tagged as the parent is (or, like it, not at all);
//   - created in the pending record's time window.
//
// Only a fork of the parent made on the worker directly, behind the proxy's
// back, in that window could be a second such session; with two, neither is
// adopted or deleted, and the fork is made again. A fork found this way is
// never deleted: it is adopted, tagged first, when it was asked for with
// the fields asked for now, and left alone otherwise.
func (h *Handler) adoptFork(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *createRequest, pending idmap.Pending, parent string, offers features) (bool, error) {
	log := h.logger.With(zap.String("session_id", req.id), zap.String("fork_of", req.forkOf))
	same := len(pending.Fields.Diff(req.fields)) == 0
	if pending.RealID != "" {
		found, err := upstream.Ask(r, next, http.MethodGet, "/session/"+url.PathEscape(pending.RealID), "", nil)
		switch {
		case err != nil:
			apierror.Upstream(w, upstream.FailureStatus(err), "upstream could not be asked for the fork of an interrupted fork: "+err.Error())
			return true, nil
		case found.Status == http.StatusNotFound:
			return false, nil // gone: fork again
		case !found.OK():
			h.ids.Relay(w, r, found, false)
			return true, nil
		case !same:
			log.Info("deleting the fork of an interrupted fork made with other fields", zap.String("real_id", pending.RealID))
			gone, err := upstream.Ask(r, next, http.MethodDelete, "/session/"+url.PathEscape(pending.RealID), "", nil)
			if err != nil || !gone.OK() && gone.Status != http.StatusNotFound {
				apierror.Upstream(w, http.StatusBadGateway, "upstream could not delete the fork of an interrupted fork")
				return true, nil
			}
			return false, nil
		}
		return h.adoptFound(w, r, next, req, pending, found, offers, "adopted the fork of an interrupted fork"), nil
	}

	parentAnswer, err := upstream.Ask(r, next, http.MethodGet, "/session/"+url.PathEscape(parent), "", nil)
	if err != nil {
		apierror.Upstream(w, upstream.FailureStatus(err), "upstream could not be asked for the session forked: "+err.Error())
		return true, nil
	}
	var parentSession listedSession
	if !parentAnswer.OK() || json.Unmarshal(parentAnswer.Body.Bytes(), &parentSession) != nil {
		return false, nil // without its parent, an untagged fork cannot be recognised
	}
	answer, err := upstream.Ask(r, next, http.MethodGet, "/session", pending.Query, nil)
	if err != nil {
		apierror.Upstream(w, upstream.FailureStatus(err), "upstream could not be searched for an interrupted fork: "+err.Error())
		return true, nil
	}
	if !answer.OK() {
		h.ids.Relay(w, r, answer, false)
		return true, nil
	}
	var listed []json.RawMessage
	if err := json.Unmarshal(answer.Body.Bytes(), &listed); err != nil {
		apierror.Upstream(w, http.StatusBadGateway, "upstream session list is not a JSON array")
		return true, nil
	}
	var tagged, candidates []listedSession
	for _, raw := range listed {
		var s listedSession
		if json.Unmarshal(raw, &s) != nil || !idmap.IsToken(s.ID) || s.ID == parent {
			continue
		}
		s.raw = raw
		if pending.Attempt != "" && string(s.Metadata[MetadataTag]) == quoted(req.id) && string(s.Metadata[AttemptTag]) == quoted(pending.Attempt) {
			tagged = append(tagged, s) // made by the pending attempt (a create of the id, say)
			continue
		}
		could, err := h.couldBeFork(r, s, parentSession, pending)
		if err != nil {
			h.logger.Error("session id mapping could not be read", zap.Error(err))
			apierror.Storage(w, "session id mapping could not be read")
			return true, nil
		}
		if could {
			candidates = append(candidates, s)
		}
	}
	switch {
	case len(tagged) == 1 && same:
		found := upstream.NewAnswer(http.StatusOK, answer.Header())
		found.Body.Write(tagged[0].raw)
		return h.adoptFound(w, r, next, req, pending, found, offers, "adopted the fork of an interrupted fork"), nil
	case len(tagged) == 1:
		log.Info("deleting the session of an interrupted attempt made with other fields", zap.String("real_id", tagged[0].ID))
		gone, err := upstream.Ask(r, next, http.MethodDelete, "/session/"+url.PathEscape(tagged[0].ID), "", nil)
		if err != nil || !gone.OK() && gone.Status != http.StatusNotFound {
			apierror.Upstream(w, http.StatusBadGateway, "upstream could not delete the session of an interrupted attempt")
			return true, nil
		}
		return false, nil
	case len(tagged) > 1:
		log.Warn("several sessions carry the id and attempt of an interrupted attempt; forking again", zap.Int("tagged", len(tagged)))
		return false, nil
	case len(candidates) == 0:
		return false, nil
	case len(candidates) > 1:
		log.Warn("an interrupted fork may have left a fork upstream, but several match; forking again", zap.Int("candidates", len(candidates)))
		return false, nil
	case !same:
		log.Info("an interrupted fork may have left a fork upstream, asked for with other fields; leaving it and forking again", zap.String("real_id", candidates[0].ID))
		return false, nil
	}
	found := upstream.NewAnswer(http.StatusOK, answer.Header())
	found.Body.Write(candidates[0].raw)
	return h.adoptFound(w, r, next, req, pending, found, offers, "adopted the untagged fork of an interrupted fork"), nil
}

// adoptFound tags and maps the fork an interrupted fork made, and answers.
func (h *Handler) adoptFound(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *createRequest, pending idmap.Pending, found *upstream.Answer, offers features, done string) bool {
	fork := newSessionIDOf(found.Body.Bytes())
	worker := upstream.Worker(r)
	endCreate := h.index.BeginCreate()
	tagged := found
	if offers.metadata {
		var err error
		if tagged, err = h.tagFork(r, next, worker, found, req.id, pending.Attempt); err != nil {
			endCreate()
			apierror.Upstream(w, upstream.FailureStatus(err), "the fork of an interrupted fork could not be tagged with its id; retry the fork: "+err.Error())
			return true
		}
	}
	if err := h.index.Store.SaveForked(r.Context(), fork, h.realIDOf(r.Context(), req.forkOf)); err != nil {
		h.logger.Warn("could not record a fork", zap.String("real_id", fork), zap.Error(err))
	}
	if h.mapFork(w, r, req, fork, worker, tagged, endCreate) {
		h.logger.Info(done, zap.String("session_id", req.id), zap.String("real_id", fork))
		h.count(sessionMetrics.adopted)
	}
	return true
}

// couldBeFork reports whether a session may be the fork an interrupted fork
// made of parent before recording it (see adoptFork).
func (h *Handler) couldBeFork(r *http.Request, s, parent listedSession, pending idmap.Pending) (bool, error) {
	created := time.UnixMilli(s.Time.Created)
	if created.Before(pending.Started.Add(-orphanBefore)) || created.After(pending.Started.Add(orphanAfter)) {
		return false, nil
	}
	if s.Title != forktitle.Next(parent.Title) || s.ParentID != "" {
		return false, nil
	}
	for _, tag := range []string{MetadataTag, AttemptTag} {
		if string(s.Metadata[tag]) != string(parent.Metadata[tag]) {
			return false, nil
		}
	}
	if _, err := h.index.Store.ClientOf(r.Context(), s.ID); !errors.Is(err, idmap.ErrNotFound) {
		return false, err
	}
	forked, err := h.index.Store.Forked(r.Context(), s.ID)
	return !forked, err
}

// realIDOf is the upstream id of a client id: its mapping's, or its own
// (also when the mapping cannot be read: it is a record's hint only).
func (h *Handler) realIDOf(ctx context.Context, clientID string) string {
	if real, mapped, err := h.index.RealOf(ctx, clientID); err == nil && mapped {
		return real
	}
	return clientID
}
