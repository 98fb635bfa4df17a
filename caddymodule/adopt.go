package caddymodule

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/idmap"
)

// adoptOrphan finishes a create that an earlier attempt left pending: the
// upstream may hold a session tagged with the client id that was never
// mapped, because the process stopped between the upstream's answer and the
// mapping write. Such a session is mapped and returned when it was made with
// the fields asked for now; otherwise it is deleted, so that the create that
// follows leaves one session for the id. It reports true when it answered.
func (h *Handler) adoptOrphan(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *createRequest, pending idmap.Pending) (bool, error) {
	ctx := r.Context()
	log := h.logger.With(zap.String("session_id", req.id))
	answer, err := askUpstream(r, next, http.MethodGet, "/session", pending.Query, nil)
	if err != nil {
		upstreamFailed(w, failureStatus(err), "upstream could not be searched for an interrupted create: "+err.Error())
		return true, nil
	}
	if !answer.ok() {
		h.relay(w, r, answer, false)
		return true, nil
	}
	var sessions []json.RawMessage
	if err := json.Unmarshal(answer.body.Bytes(), &sessions); err != nil {
		upstreamFailed(w, http.StatusBadGateway, "upstream session list is not a JSON array")
		return true, nil
	}
	for _, raw := range sessions {
		var s struct {
			ID       string                     `json:"id"`
			Metadata map[string]json.RawMessage `json:"metadata"`
		}
		if json.Unmarshal(raw, &s) != nil || string(s.Metadata[MetadataTag]) != quoted(req.id) || !idmap.IsToken(s.ID) {
			continue
		}
		if diff := pending.Fields.Diff(req.fields); len(diff) > 0 {
			log.Info("deleting the session of an interrupted create made with other fields", zap.String("real_id", s.ID), zap.Strings("fields", diff))
			gone, err := askUpstream(r, next, http.MethodDelete, "/session/"+s.ID, "", nil)
			if err != nil || !gone.ok() && gone.status != http.StatusNotFound {
				upstreamFailed(w, http.StatusBadGateway, "upstream could not delete the session of an interrupted create")
				return true, nil
			}
			continue
		}
		m := idmap.Mapping{ClientID: req.id, RealID: s.ID, Fields: pending.Fields, Created: time.Now().UTC()}
		if err := h.index.Save(ctx, m); err != nil {
			storageFailed(w, "the session was found but its id mapping could not be stored; retry the create")
			return true, nil
		}
		_ = h.index.Store.RemovePending(ctx, req.id)
		log.Info("adopted the session of an interrupted create", zap.String("real_id", s.ID))
		adopted := &upstreamAnswer{status: http.StatusOK, header: answer.header}
		adopted.body.Write(raw)
		h.relay(w, r, adopted, false)
		return true, nil
	}
	return false, nil
}

func quoted(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
