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

// replayPrompt answers a retry from the record of its key's first request.
func (p *Prompts) replayPrompt(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, rec idmap.Prompt) error {
	answer := upstream.NewAnswer(rec.Status, nil)
	if rec.ContentType != "" {
		answer.Header().Set("Content-Type", rec.ContentType)
	}
	if rec.Body == nil && rec.ReplyID != "" {
		// Too large to keep: the assistant message is read back.
		sessionID, err := p.ids.UpstreamID(r.Context(), rec.SessionID)
		if err != nil {
			p.logger.Error("session id mapping could not be read", zap.Error(err))
			apierror.Storage(w, "session id mapping could not be read")
			return nil
		}
		fetched, err := upstream.Ask(r, next, http.MethodGet, "/session/"+url.PathEscape(sessionID)+"/message/"+url.PathEscape(rec.ReplyID), "", nil)
		if err != nil {
			apierror.Upstream(w, upstream.FailureStatus(err), "the recorded answer could not be read back: "+err.Error())
			return nil
		}
		if !fetched.OK() {
			p.ids.Relay(w, r, fetched, false)
			return nil
		}
		answer = fetched
	} else {
		answer.Body.Write(rec.Body)
	}
	p.count(outcomeReplayed)
	p.ids.Relay(w, r, answer, true)
	return nil
}

// resumePrompt resolves a pending record: an earlier attempt with this key
// was sent (or about to be) and its answer never recorded, because the
// process stopped, the upstream failed or the confirmation timed out. The
// upstream is the source of truth: if the message the attempt was sent under
// exists, the prompt went in and is finished, not sent again; if it does not,
// and the attempt is old enough that it can no longer arrive, the prompt is
// sent under the same id, which opencode has not seen.
func (p *Prompts) resumePrompt(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *keyedRequest, rec idmap.Prompt) error {
	log := p.logger.With(zap.String("session_id", req.sessionID), zap.String("message_id", rec.MessageID))
	if req.route.upstreamDedups {
		// opencode's v2 prompt admits an id once and answers a repeat with
		// the admitted input: sending it again is the question.
		return p.sendPrompt(w, r, next, req, rec, outcomeRecovered)
	}
	exists, answered := p.messageExists(w, r, next, req, rec.MessageID)
	if answered {
		return nil
	}
	if exists {
		if req.route.async {
			log.Info("an interrupted keyed prompt had reached the upstream; finishing it")
			answer := upstream.NewAnswer(http.StatusNoContent, nil)
			return p.settlePrompt(w, r, next, req, rec, answer, outcomeRecovered)
		}
		reply, done, answered := p.findReply(w, r, next, req, rec.MessageID)
		if answered {
			return nil
		}
		if !done {
			inProgress(w, req, "the prompt of an earlier attempt with this Idempotency-Key is still running upstream; retry later")
			return nil
		}
		log.Info("an interrupted keyed prompt had reached the upstream; answering with its reply")
		return p.settlePrompt(w, r, next, req, rec, reply, outcomeRecovered)
	}
	if since := time.Since(rec.Started); since < Settle {
		p.count(outcomeInFlight)
		inProgress(w, req, "an earlier attempt with this Idempotency-Key may still reach the upstream; retry in a few seconds")
		return nil
	}
	log.Info("an interrupted keyed prompt never reached the upstream; sending it")
	rec.Started = time.Now().UTC()
	if err := p.index.Store.SavePrompt(r.Context(), rec); err != nil {
		p.logger.Error("the Idempotency-Key record could not be written", zap.Error(err))
		apierror.Storage(w, "the Idempotency-Key record could not be written")
		return nil
	}
	return p.sendPrompt(w, r, next, req, rec, outcomeResent)
}

// storedMessage is what findReply reads of a message.
type storedMessage struct {
	Info struct {
		ID       string `json:"id"`
		Role     string `json:"role"`
		ParentID string `json:"parentID"`
		Finish   string `json:"finish"`
		Time     struct {
			Completed *float64 `json:"completed"`
		} `json:"time"`
	} `json:"info"`
}

// findReply finds the answer a synchronous prompt route gives, the last
// assistant message replying to the user message, and reports whether it is
// complete (the agent loop may add more while it calls tools).
func (p *Prompts) findReply(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *keyedRequest, messageID string) (*upstream.Answer, bool, bool) {
	sessionID, err := p.ids.UpstreamID(r.Context(), req.sessionID)
	if err != nil {
		p.logger.Error("session id mapping could not be read", zap.Error(err))
		apierror.Storage(w, "session id mapping could not be read")
		return nil, false, true
	}
	answer, err := upstream.Ask(r, next, http.MethodGet, "/session/"+url.PathEscape(sessionID)+"/message", r.URL.RawQuery, nil)
	if err != nil {
		apierror.Upstream(w, upstream.FailureStatus(err), "the upstream could not be asked for the prompt's reply: "+err.Error())
		return nil, false, true
	}
	if !answer.OK() {
		p.ids.Relay(w, r, answer, false)
		return nil, false, true
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(answer.Body.Bytes(), &raw); err != nil {
		apierror.Upstream(w, http.StatusBadGateway, "the upstream's message list is not a JSON array")
		return nil, false, true
	}
	var last json.RawMessage
	var lastInfo storedMessage
	for _, m := range raw {
		var s storedMessage
		if json.Unmarshal(m, &s) == nil && s.Info.Role == "assistant" && s.Info.ParentID == messageID {
			last, lastInfo = m, s
		}
	}
	if last == nil || lastInfo.Info.Time.Completed == nil || lastInfo.Info.Finish == "tool-calls" {
		return nil, false, false
	}
	reply := upstream.NewAnswer(http.StatusOK, http.Header{"Content-Type": {"application/json"}})
	reply.Body.Write(last)
	return reply, true, false
}
