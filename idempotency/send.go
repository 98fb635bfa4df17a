package idempotency

import (
	"encoding/json"
	"net/http"
	"net/url"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/apierror"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// confirmPoll is how often confirm asks the upstream for the message.
const confirmPoll = 25 * time.Millisecond

// sendPrompt sends a recorded prompt upstream and settles its record.
func (p *Prompts) sendPrompt(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *keyedRequest, rec idmap.Prompt, outcome string) error {
	answer, err := p.askPrompt(r, next, req, rec.MessageID)
	if err != nil {
		p.logger.Warn("keyed prompt could not be sent", zap.String("session_id", req.sessionID), zap.String("message_id", rec.MessageID), zap.Error(err))
		apierror.Upstream(w, upstream.FailureStatus(err), "the upstream could not be asked and may or may not have taken the prompt; "+
			"retry with the same Idempotency-Key, which prompts at most once: "+err.Error())
		return nil
	}
	if afterPrompt != nil {
		afterPrompt()
	}
	return p.settlePrompt(w, r, next, req, rec, answer, outcome)
}

// settlePrompt records the upstream's answer to a prompt and relays it. A
// success is recorded for replay; a refusal (4xx: a bad body, an unknown or
// busy session) means nothing was prompted, and the record goes, so that
// the key can be retried once the cause is fixed; after a 5xx the outcome
// is unknown and the record stays pending for the retry to resolve.
func (p *Prompts) settlePrompt(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *keyedRequest, rec idmap.Prompt, answer *upstream.Answer, outcome string) error {
	ctx := r.Context()
	log := p.logger.With(zap.String("session_id", req.sessionID), zap.String("message_id", rec.MessageID))
	switch {
	case answer.OK():
		if req.route.async && p.config.Confirm > 0 {
			visible, answered := p.confirmPrompt(w, r, next, req, rec.MessageID)
			if answered {
				return nil
			}
			if !visible {
				log.Warn("upstream accepted a keyed prompt that did not become visible", zap.Duration("confirm", time.Duration(p.config.Confirm)))
				apierror.Upstream(w, http.StatusGatewayTimeout, "the upstream accepted the prompt but its message did not appear within "+
					time.Duration(p.config.Confirm).String()+"; retry with the same Idempotency-Key, which sends it again only if it was lost")
				return nil
			}
		}
		rec = recordAnswer(rec, answer)
		if err := p.index.Store.SavePrompt(ctx, rec); err != nil {
			// The answer is true; a retry finds the message upstream.
			log.Error("keyed prompt answered but its record could not be stored", zap.Error(err))
		}
		p.count(outcome)
	case answer.Status < http.StatusInternalServerError:
		if err := p.index.Store.RemovePrompt(ctx, req.sessionID, req.caller, req.key); err != nil {
			log.Warn("could not remove the record of a refused prompt", zap.Error(err))
		}
	default:
		log.Warn("upstream failed a keyed prompt; its outcome is left to the retry", zap.Int("status", answer.Status))
	}
	p.ids.Relay(w, r, answer, false)
	return nil
}

// recordAnswer completes a record with the upstream's answer.
func recordAnswer(rec idmap.Prompt, answer *upstream.Answer) idmap.Prompt {
	rec.Done, rec.Status, rec.ContentType = true, answer.Status, answer.Header().Get("Content-Type")
	if answer.Body.Len() <= maxRecordedAnswer {
		rec.Body = append([]byte(nil), answer.Body.Bytes()...)
		return rec
	}
	var reply struct {
		Info struct {
			ID string `json:"id"`
		} `json:"info"`
	}
	_ = json.Unmarshal(answer.Body.Bytes(), &reply)
	rec.ReplyID = reply.Info.ID
	return rec
}

// askPrompt sends a keyed prompt upstream under messageID, with the client's
// ids rewritten in mapping mode.
func (p *Prompts) askPrompt(r *http.Request, next caddyhttp.Handler, req *keyedRequest, messageID string) (*upstream.Answer, error) {
	ctx := r.Context()
	sessionID, err := p.ids.UpstreamID(r.Context(), req.sessionID)
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
	if body, err = p.ids.ToUpstream(ctx, body); err != nil {
		return nil, err
	}
	query, err := p.ids.ToUpstream(ctx, []byte(r.URL.RawQuery))
	if err != nil {
		return nil, err
	}
	return upstream.Ask(r, next, http.MethodPost, promptPath(req.route, sessionID), string(query), body)
}

// promptPath is the upstream path of a prompt route for a session.
func promptPath(route Route, sessionID string) string {
	if route == routeV2Prompt {
		return "/api/session/" + url.PathEscape(sessionID) + "/prompt"
	}
	return "/session/" + url.PathEscape(sessionID) + "/" + route.name
}

// messageExists asks the upstream whether a session has a message. It
// answers the client itself, reporting answered, when the upstream cannot
// say.
func (p *Prompts) messageExists(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *keyedRequest, messageID string) (exists, answered bool) {
	sessionID, err := p.ids.UpstreamID(r.Context(), req.sessionID)
	if err != nil {
		p.logger.Error("session id mapping could not be read", zap.Error(err))
		apierror.Storage(w, "session id mapping could not be read")
		return false, true
	}
	answer, err := upstream.Ask(r, next, http.MethodGet, "/session/"+url.PathEscape(sessionID)+"/message/"+url.PathEscape(messageID), r.URL.RawQuery, nil)
	switch {
	case err != nil:
		apierror.Upstream(w, upstream.FailureStatus(err), "the upstream could not be asked whether the prompt arrived: "+err.Error())
		return false, true
	case answer.OK():
		return true, false
	case answer.Status == http.StatusNotFound:
		return false, false
	}
	p.ids.Relay(w, r, answer, false)
	return false, true
}

// confirmPrompt polls the upstream until the prompt's message is visible or
// the confirm time is over.
func (p *Prompts) confirmPrompt(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *keyedRequest, messageID string) (visible, answered bool) {
	deadline := time.Now().Add(time.Duration(p.config.Confirm))
	for {
		exists, answered := p.messageExists(w, r, next, req, messageID)
		if exists || answered || time.Now().After(deadline) {
			return exists, answered
		}
		time.Sleep(confirmPoll)
	}
}
