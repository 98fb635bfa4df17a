package nativeserver

import (
	"encoding/json"
	"net/http"
	"strings"
)

// Reply is the reference behaviour for a prompt: the assistant answers
// "Reference reply: " followed by the prompt's text parts joined by spaces.
// It is deterministic on purpose, so clients and tests can check round trips.
func Reply(prompt string) string { return "Reference reply: " + prompt }

type promptBody struct {
	Agent string `json:"agent"`
	Parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	} `json:"parts"`
}

// prompt serves POST /session/{id}/message (wait: answer with the assistant
// message) and /prompt_async (answer 204 at once, reply in the background).
// Either way the session goes busy, gets the user's and the assistant's
// messages with their parts, and goes idle, with the events opencode sends.
func (s *Server) prompt(wait bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var in promptBody
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<20)).Decode(&in); err != nil || len(in.Parts) == 0 {
			badRequest(w, "prompt body needs parts", nil)
			return
		}
		id := r.PathValue("id")
		s.mu.Lock()
		_, ok := s.store.get(id)
		if ok {
			// Busy before prompt_async answers (answer makes it idle).
			s.busy[id]++
		}
		s.mu.Unlock()
		if !ok {
			notFound(w, id)
			return
		}
		var texts []string
		for _, p := range in.Parts {
			if p.Type == "text" {
				texts = append(texts, p.Text)
			}
		}
		if !wait {
			w.WriteHeader(http.StatusNoContent)
			go s.answer(id, in.Agent, strings.Join(texts, " "))
			return
		}
		msg, err := s.answer(id, in.Agent, strings.Join(texts, " "))
		if err != nil {
			serverError(w, err)
			return
		}
		writeJSON(w, 200, msg)
	}
}

// answer records the exchange and returns the assistant's message.
// The caller has counted the session as busy.
func (s *Server) answer(sessionID, agent, text string) (*Message, error) {
	s.events.publish("session.status", map[string]any{"sessionID": sessionID, "status": map[string]any{"type": "busy"}})
	defer func() {
		s.mu.Lock()
		if s.busy[sessionID]--; s.busy[sessionID] <= 0 {
			delete(s.busy, sessionID)
		}
		s.mu.Unlock()
		s.events.publish("session.status", map[string]any{"sessionID": sessionID, "status": map[string]any{"type": "idle"}})
		s.events.publish("session.idle", map[string]any{"sessionID": sessionID})
	}()
	user := newMessage(sessionID, "user", agent, "", text)
	assistant := newMessage(sessionID, "assistant", agent, user.Info.ID, Reply(text))
	assistant.Info.Finish = "stop"
	assistant.Info.Time.Completed = now()

	s.mu.Lock()
	defer s.mu.Unlock()
	rec, ok := s.store.get(sessionID)
	if !ok {
		return nil, errSessionGone
	}
	next := *rec
	next.Messages = append(append([]Message{}, rec.Messages...), user, assistant)
	next.Session.Time.Updated = now()
	if err := s.store.put(&next); err != nil {
		return nil, err
	}
	for _, m := range []Message{user, assistant} {
		s.events.publish("message.updated", map[string]any{"sessionID": sessionID, "info": m.Info})
		for _, p := range m.Parts {
			s.events.publish("message.part.updated", map[string]any{"sessionID": sessionID, "part": p})
		}
	}
	s.events.publish("session.updated", map[string]any{"sessionID": sessionID, "info": next.Session})
	return &assistant, nil
}

func newMessage(sessionID, role, agent, parentID, text string) Message {
	id := newMessageID()
	return Message{
		Info:  MessageInfo{ID: id, SessionID: sessionID, Role: role, Agent: agent, ParentID: parentID, Time: MessageTime{Created: now()}},
		Parts: []Part{{ID: newPartID(), SessionID: sessionID, MessageID: id, Type: "text", Text: text}},
	}
}
