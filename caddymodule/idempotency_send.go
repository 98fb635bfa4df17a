package caddymodule

import (
	"encoding/json"
	"net/http"
	"net/url"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/idmap"
)

// confirmPoll is how often confirm asks the upstream for the message.
const confirmPoll = 25 * time.Millisecond

// sendPrompt sends a recorded prompt upstream and settles its record.
func (h *Handler) sendPrompt(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *keyedRequest, rec idmap.Prompt, outcome string) error {
	answer, err := h.askPrompt(r, next, req, rec.MessageID)
	if err != nil {
		h.logger.Warn("keyed prompt could not be sent", zap.String("session_id", req.sessionID), zap.String("message_id", rec.MessageID), zap.Error(err))
		upstreamFailed(w, failureStatus(err), "the upstream could not be asked and may or may not have taken the prompt; "+
			"retry with the same Idempotency-Key, which prompts at most once: "+err.Error())
		return nil
	}
	if h.fault != nil {
		h.fault()
	}
	return h.settlePrompt(w, r, next, req, rec, answer, outcome)
}

// settlePrompt records the upstream's answer to a prompt and relays it. A
// success is recorded for replay; a refusal (4xx: a bad body, an unknown or
// busy session) means nothing was prompted, and the record goes, so that
// the key can be retried once the cause is fixed; after a 5xx the outcome
// is unknown and the record stays pending for the retry to resolve.
func (h *Handler) settlePrompt(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *keyedRequest, rec idmap.Prompt, answer *upstreamAnswer, outcome string) error {
	ctx := r.Context()
	log := h.logger.With(zap.String("session_id", req.sessionID), zap.String("message_id", rec.MessageID))
	switch {
	case answer.ok():
		if req.route.async && h.Idempotency.Confirm > 0 {
			visible, answered := h.confirmPrompt(w, r, next, req, rec.MessageID)
			if answered {
				return nil
			}
			if !visible {
				log.Warn("upstream accepted a keyed prompt that did not become visible", zap.Duration("confirm", time.Duration(h.Idempotency.Confirm)))
				upstreamFailed(w, http.StatusGatewayTimeout, "the upstream accepted the prompt but its message did not appear within "+
					time.Duration(h.Idempotency.Confirm).String()+"; retry with the same Idempotency-Key, which sends it again only if it was lost")
				return nil
			}
		}
		rec = recordAnswer(rec, answer)
		if err := h.index.Store.SavePrompt(ctx, rec); err != nil {
			// The answer is true; a retry finds the message upstream.
			log.Error("keyed prompt answered but its record could not be stored", zap.Error(err))
		}
		h.countPrompt(outcome)
	case answer.status < http.StatusInternalServerError:
		if err := h.index.Store.RemovePrompt(ctx, req.sessionID, req.key); err != nil {
			log.Warn("could not remove the record of a refused prompt", zap.Error(err))
		}
	default:
		log.Warn("upstream failed a keyed prompt; its outcome is left to the retry", zap.Int("status", answer.status))
	}
	h.relay(w, r, answer, false)
	return nil
}

// recordAnswer completes a record with the upstream's answer.
func recordAnswer(rec idmap.Prompt, answer *upstreamAnswer) idmap.Prompt {
	rec.Done, rec.Status, rec.ContentType = true, answer.status, answer.header.Get("Content-Type")
	if answer.body.Len() <= maxRecordedAnswer {
		rec.Body = append([]byte(nil), answer.body.Bytes()...)
		return rec
	}
	var reply struct {
		Info struct {
			ID string `json:"id"`
		} `json:"info"`
	}
	_ = json.Unmarshal(answer.body.Bytes(), &reply)
	rec.ReplyID = reply.Info.ID
	return rec
}

// askPrompt sends a keyed prompt upstream under messageID, with the client's
// ids rewritten in mapping mode.
func (h *Handler) askPrompt(r *http.Request, next caddyhttp.Handler, req *keyedRequest, messageID string) (*upstreamAnswer, error) {
	ctx := r.Context()
	sessionID, err := h.upstreamSessionID(r, req.sessionID)
	if err != nil {
		return nil, err
	}
	fields := map[string]json.RawMessage{}
	if len(req.body) > 0 {
		if err := json.Unmarshal(req.body, &fields); err != nil {
			return nil, err
		}
	}
	fields[req.route.idField], _ = json.Marshal(messageID)
	body, err := json.Marshal(fields)
	if err != nil {
		return nil, err
	}
	query := r.URL.RawQuery
	if h.Mode == ModeMapping {
		lookup := &lookupFunc{resolve: h.index.RealOf, ctx: ctx}
		body, _ = idmap.Replace(body, lookup.lookup)
		if q, replaced := idmap.Replace([]byte(query), lookup.lookup); replaced > 0 {
			query = string(q)
		}
		if lookup.err != nil {
			return nil, lookup.err
		}
	}
	return askUpstream(r, next, http.MethodPost, promptPath(req.route, sessionID), query, body)
}

// promptPath is the upstream path of a prompt route for a session.
func promptPath(route promptRoute, sessionID string) string {
	if route == routeV2Prompt {
		return "/api/session/" + url.PathEscape(sessionID) + "/prompt"
	}
	return "/session/" + url.PathEscape(sessionID) + "/" + route.name
}

// upstreamSessionID is the upstream's id of a client's session: its real id
// in mapping mode (an id the handler did not map is the upstream's own).
func (h *Handler) upstreamSessionID(r *http.Request, sessionID string) (string, error) {
	if h.Mode == ModeDirect {
		return sessionID, nil
	}
	realID, mapped, err := h.index.RealOf(r.Context(), sessionID)
	if err != nil || !mapped {
		return sessionID, err
	}
	return realID, nil
}

// messageExists asks the upstream whether a session has a message. It
// answers the client itself, reporting answered, when the upstream cannot
// say.
func (h *Handler) messageExists(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *keyedRequest, messageID string) (exists, answered bool) {
	sessionID, err := h.upstreamSessionID(r, req.sessionID)
	if err != nil {
		storageFailed(w, "session id mapping could not be read")
		return false, true
	}
	answer, err := askUpstream(r, next, http.MethodGet, "/session/"+url.PathEscape(sessionID)+"/message/"+url.PathEscape(messageID), r.URL.RawQuery, nil)
	switch {
	case err != nil:
		upstreamFailed(w, failureStatus(err), "the upstream could not be asked whether the prompt arrived: "+err.Error())
		return false, true
	case answer.ok():
		return true, false
	case answer.status == http.StatusNotFound:
		return false, false
	}
	h.relay(w, r, answer, false)
	return false, true
}

// confirmPrompt polls the upstream until the prompt's message is visible or
// the confirm time is over.
func (h *Handler) confirmPrompt(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *keyedRequest, messageID string) (visible, answered bool) {
	deadline := time.Now().Add(time.Duration(h.Idempotency.Confirm))
	for {
		exists, answered := h.messageExists(w, r, next, req, messageID)
		if exists || answered || time.Now().After(deadline) {
			return exists, answered
		}
		time.Sleep(confirmPoll)
	}
}
