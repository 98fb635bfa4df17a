package caddymodule

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/apierror"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// orphanWindow bounds when the session of an interrupted create can have been
// created, relative to its pending record: a little before (clock skew
// between Caddy and the upstream) and up to the proxy's retry budget after.
const (
	orphanBefore = 2 * time.Second
	orphanAfter  = 2 * time.Minute
)

// listedSession is what adoption reads of an upstream session.
type listedSession struct {
	ID       string                     `json:"id"`
	ParentID string                     `json:"parentID"`
	Title    string                     `json:"title"`
	Metadata map[string]json.RawMessage `json:"metadata"`
	Time     struct {
		Created int64 `json:"created"`
	} `json:"time"`
	raw json.RawMessage
}

// adoptOrphan finishes a create that an earlier attempt left pending: the
// upstream may hold a session for the client id that was never mapped,
// because the process stopped between the upstream's answer and the mapping
// write. It reports true when it answered.
//
// Upstreams that keep metadata carry the client id and the name of the
// create attempt (Pending.Attempt) in the session's metadata, and the
// session with both is the orphan: nothing else is. A fork copies its
// parent's metadata, id and attempt alike, but the attempt is the parent's,
// never the pending one's, so a fork of an earlier session is never adopted
// or deleted. The orphan made with the fields asked for now is mapped and
// returned; one made with other fields (an interrupted fork under the id,
// say, retried as a create) is deleted, so that the create that follows
// leaves one session for the id. Two sessions with the id and the attempt
// (a fork of the orphan made on the worker directly, whose copied tags are
// the orphan's) cannot be told apart: neither is adopted or deleted.
//
// Upstreams that keep no metadata (opencode 1.15) cannot be told which
// session is the orphan, only which could be: an unmapped session created in
// the pending create's time window with its title and parent. Exactly one
// such candidate is adopted; with none or several, nothing is adopted or
// deleted, because mapping a client id to someone else's session would be
// worse than leaving an orphan behind.
func (h *Handler) adoptOrphan(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *createRequest, pending idmap.Pending) (bool, error) {
	ctx := r.Context()
	log := h.logger.With(zap.String("session_id", req.id))
	if pending.RealID != "" {
		// An interrupted fork under the id, retried as a create: its fork
		// was made with other fields (forkOf) and is replaced.
		log.Info("deleting the fork of an interrupted fork, retried as a create", zap.String("real_id", pending.RealID))
		gone, err := upstream.Ask(r, next, http.MethodDelete, "/session/"+url.PathEscape(pending.RealID), "", nil)
		if err != nil || !gone.OK() && gone.Status != http.StatusNotFound {
			apierror.Upstream(w, http.StatusBadGateway, "upstream could not delete the fork of an interrupted fork")
			return true, nil
		}
		return false, nil
	}
	offers, err := h.features(r, next)
	if err != nil {
		apierror.Upstream(w, upstream.FailureStatus(err), "upstream could not be asked what it supports: "+err.Error())
		return true, nil
	}
	answer, err := upstream.Ask(r, next, http.MethodGet, "/session", pending.Query, nil)
	if err != nil {
		apierror.Upstream(w, upstream.FailureStatus(err), "upstream could not be searched for an interrupted create: "+err.Error())
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
		if json.Unmarshal(raw, &s) != nil || !idmap.IsToken(s.ID) {
			continue
		}
		s.raw = raw
		switch {
		case string(s.Metadata[MetadataTag]) == quoted(req.id):
			if pending.Attempt == "" || string(s.Metadata[AttemptTag]) == quoted(pending.Attempt) {
				tagged = append(tagged, s)
			}
		case !offers.metadata && h.couldBeOrphan(r, s, pending):
			candidates = append(candidates, s)
		}
	}
	if len(tagged) > 1 && pending.Attempt != "" {
		log.Warn("several sessions carry the id and attempt of an interrupted create; creating a new one", zap.Int("tagged", len(tagged)))
		return false, nil
	}
	if len(tagged) == 0 && len(candidates) > 0 {
		if len(candidates) > 1 {
			log.Warn("an interrupted create may have left a session upstream, but several match; creating a new one", zap.Int("candidates", len(candidates)))
			return false, nil
		}
		if len(pending.Fields.Diff(req.fields)) > 0 {
			return false, nil
		}
		tagged = candidates
	}
	if pending.Attempt == "" && len(tagged) > 0 {
		// A record from before attempts were named: a tag alone does not say
		// which attempt (or which fork of an earlier session of the id) made
		// a session. Adopt one only when it is the only one and was asked
		// for as now; never delete.
		if len(tagged) > 1 || len(pending.Fields.Diff(req.fields)) > 0 {
			log.Warn("an interrupted create from before attempts were named may have left a session upstream; creating a new one", zap.Int("tagged", len(tagged)))
			return false, nil
		}
	}
	for _, s := range tagged {
		if diff := pending.Fields.Diff(req.fields); len(diff) > 0 {
			log.Info("deleting the session of an interrupted create made with other fields", zap.String("real_id", s.ID), zap.Strings("fields", diff))
			gone, err := upstream.Ask(r, next, http.MethodDelete, "/session/"+s.ID, "", nil)
			if err != nil || !gone.OK() && gone.Status != http.StatusNotFound {
				apierror.Upstream(w, http.StatusBadGateway, "upstream could not delete the session of an interrupted create")
				return true, nil
			}
			continue
		}
		m := idmap.Mapping{ClientID: req.id, RealID: s.ID, Fields: pending.Fields, Created: time.Now().UTC(), Worker: upstream.Worker(r)}
		if err := h.index.Save(ctx, m); err != nil {
			h.logger.Error("the session was found but its id mapping could not be stored; retry the create", zap.Error(err))
			apierror.Storage(w, "the session was found but its id mapping could not be stored; retry the create")
			return true, nil
		}
		_ = h.index.Store.RemovePending(ctx, req.id)
		log.Info("adopted the session of an interrupted create", zap.String("real_id", s.ID))
		h.count(sessionMetrics.adopted)
		adopted := upstream.NewAnswer(http.StatusOK, answer.Header())
		adopted.Body.Write(s.raw)
		if req.v2 {
			if adopted, err = h.sessionAnswer(r, next, s.ID, true); err != nil {
				apierror.Upstream(w, upstream.FailureStatus(err), "the session was adopted but could not be read back: "+err.Error())
				return true, nil
			}
		}
		h.ids.Relay(w, r, adopted, false)
		return true, nil
	}
	return false, nil
}

// couldBeOrphan reports whether an untagged session may be the one a pending
// create made: created in its window, not mapped, with its title and parent.
func (h *Handler) couldBeOrphan(r *http.Request, s listedSession, pending idmap.Pending) bool {
	created := time.UnixMilli(s.Time.Created)
	if created.Before(pending.Started.Add(-orphanBefore)) || created.After(pending.Started.Add(orphanAfter)) {
		return false
	}
	if _, err := h.index.Store.ClientOf(r.Context(), s.ID); !errors.Is(err, idmap.ErrNotFound) {
		return false
	}
	if title, ok := pending.Fields["title"]; ok {
		if !bytes.Equal(title, []byte(quoted(s.Title))) {
			return false
		}
	} else if !strings.HasPrefix(s.Title, "New session - ") && !strings.HasPrefix(s.Title, "Child session - ") {
		return false
	}
	var parent string
	_ = json.Unmarshal(pending.Fields["parentID"], &parent)
	if parent == "" {
		return s.ParentID == ""
	}
	realParent, mapped, err := h.index.RealOf(r.Context(), parent)
	return err == nil && mapped && realParent == s.ParentID
}

func quoted(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
