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

// replayPrompt answers a retry from the record of its key's first request.
func (h *Handler) replayPrompt(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, rec idmap.Prompt) error {
	answer := &upstreamAnswer{status: rec.Status, header: http.Header{}}
	if rec.ContentType != "" {
		answer.header.Set("Content-Type", rec.ContentType)
	}
	if rec.Body == nil && rec.ReplyID != "" {
		// Too large to keep: the assistant message is read back.
		sessionID, err := h.upstreamSessionID(r, rec.SessionID)
		if err != nil {
			storageFailed(w, "session id mapping could not be read")
			return nil
		}
		fetched, err := askUpstream(r, next, http.MethodGet, "/session/"+url.PathEscape(sessionID)+"/message/"+url.PathEscape(rec.ReplyID), "", nil)
		if err != nil {
			upstreamFailed(w, failureStatus(err), "the recorded answer could not be read back: "+err.Error())
			return nil
		}
		if !fetched.ok() {
			h.relay(w, r, fetched, false)
			return nil
		}
		answer = fetched
	} else {
		answer.body.Write(rec.Body)
	}
	h.countPrompt(outcomeReplayed)
	h.relay(w, r, answer, true)
	return nil
}

// resumePrompt resolves a pending record: an earlier attempt with this key
// was sent (or about to be) and its answer never recorded, because the
// process stopped, the upstream failed or the confirmation timed out. The
// upstream is the source of truth: if the message the attempt was sent under
// exists, the prompt went in and is finished, not sent again; if it does not,
// and the attempt is old enough that it can no longer arrive, the prompt is
// sent under the same id, which opencode has not seen.
func (h *Handler) resumePrompt(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *keyedRequest, rec idmap.Prompt) error {
	log := h.logger.With(zap.String("session_id", req.sessionID), zap.String("message_id", rec.MessageID))
	if req.route.upstreamDedups {
		// opencode's v2 prompt admits an id once and answers a repeat with
		// the admitted input: sending it again is the question.
		return h.sendPrompt(w, r, next, req, rec, outcomeRecovered)
	}
	exists, answered := h.messageExists(w, r, next, req, rec.MessageID)
	if answered {
		return nil
	}
	if exists {
		if req.route.async {
			log.Info("an interrupted keyed prompt had reached the upstream; finishing it")
			answer := &upstreamAnswer{status: http.StatusNoContent, header: http.Header{}}
			return h.settlePrompt(w, r, next, req, rec, answer, outcomeRecovered)
		}
		reply, done, answered := h.findReply(w, r, next, req, rec.MessageID)
		if answered {
			return nil
		}
		if !done {
			inProgress(w, req, "the prompt of an earlier attempt with this Idempotency-Key is still running upstream; retry later")
			return nil
		}
		log.Info("an interrupted keyed prompt had reached the upstream; answering with its reply")
		return h.settlePrompt(w, r, next, req, rec, reply, outcomeRecovered)
	}
	if since := time.Since(rec.Started); since < promptSettle {
		h.countPrompt(outcomeInFlight)
		inProgress(w, req, "an earlier attempt with this Idempotency-Key may still reach the upstream; retry in a few seconds")
		return nil
	}
	log.Info("an interrupted keyed prompt never reached the upstream; sending it")
	rec.Started = time.Now().UTC()
	if err := h.index.Store.SavePrompt(r.Context(), rec); err != nil {
		storageFailed(w, err.Error())
		return nil
	}
	return h.sendPrompt(w, r, next, req, rec, outcomeResent)
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
func (h *Handler) findReply(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, req *keyedRequest, messageID string) (*upstreamAnswer, bool, bool) {
	sessionID, err := h.upstreamSessionID(r, req.sessionID)
	if err != nil {
		storageFailed(w, "session id mapping could not be read")
		return nil, false, true
	}
	answer, err := askUpstream(r, next, http.MethodGet, "/session/"+url.PathEscape(sessionID)+"/message", r.URL.RawQuery, nil)
	if err != nil {
		upstreamFailed(w, failureStatus(err), "the upstream could not be asked for the prompt's reply: "+err.Error())
		return nil, false, true
	}
	if !answer.ok() {
		h.relay(w, r, answer, false)
		return nil, false, true
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(answer.body.Bytes(), &raw); err != nil {
		upstreamFailed(w, http.StatusBadGateway, "the upstream's message list is not a JSON array")
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
	reply := &upstreamAnswer{status: http.StatusOK, header: http.Header{"Content-Type": {"application/json"}}}
	reply.body.Write(last)
	return reply, true, false
}
