package nativeserver

import (
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"sort"
)

// A session's history, as opencode's sync routes give and take it: each
// session is an aggregate whose events have increasing positions (seq).
// Here they are derived from the record: seq 0 is session.created.1 (the
// session as it is now, and the fields its duplicates are compared on),
// then a message.updated.1 per message (with its parts) and, if the session
// changed since it was created, one session.updated.1, each at the position
// of its last change. POST /sync/history and POST /sync/replay move a
// session to another server with its id, messages and fields; that is what
// package move does (docs/native-server.md).

type syncEvent struct {
	ID          string          `json:"id"`
	AggregateID string          `json:"aggregate_id"`
	Seq         int64           `json:"seq"`
	Type        string          `json:"type"`
	Data        json.RawMessage `json:"data"`
}

type replayedEvent struct {
	ID          string          `json:"id"`
	AggregateID string          `json:"aggregateID"`
	Seq         int64           `json:"seq"`
	Type        string          `json:"type"`
	Data        json.RawMessage `json:"data"`
}

type sessionData struct {
	SessionID string       `json:"sessionID"`
	Info      Session      `json:"info"`
	Fields    fieldsRecord `json:"fields,omitempty"`
}

type messageData struct {
	SessionID string      `json:"sessionID"`
	Info      MessageInfo `json:"info"`
	Parts     []Part      `json:"parts"`
}

// sequence gives what changed from prev to rec its positions; with prev
// nil, rec is new (or was stored before positions were) and gets them all.
func sequence(prev, rec *record) {
	if prev == nil {
		if len(rec.MessageSeqs) == len(rec.Messages) && (rec.Seq > 0 || len(rec.Messages) == 0) {
			return
		}
		prev = &record{Session: rec.Session}
	}
	seq := prev.Seq
	seqs := make([]int64, len(rec.Messages))
	for i, m := range rec.Messages {
		if i < len(prev.Messages) && i < len(prev.MessageSeqs) && prev.Messages[i].Info.ID == m.Info.ID {
			seqs[i] = prev.MessageSeqs[i]
			continue
		}
		seq++
		seqs[i] = seq
	}
	rec.SessionSeq = prev.SessionSeq
	if !reflect.DeepEqual(prev.Session, rec.Session) {
		seq++
		rec.SessionSeq = seq
	}
	rec.Seq, rec.MessageSeqs = seq, seqs
}

// history is a record's events after position after (-1: all).
func (rec *record) history(after int64) []syncEvent {
	var events []syncEvent
	add := func(seq int64, typ string, data any) {
		if seq <= after {
			return
		}
		raw, _ := json.Marshal(data)
		events = append(events, syncEvent{ID: fmt.Sprintf("evt_%s_%d", rec.Session.ID, seq), AggregateID: rec.Session.ID, Seq: seq, Type: typ, Data: raw})
	}
	add(0, "session.created.1", sessionData{SessionID: rec.Session.ID, Info: rec.Session, Fields: rec.Fields})
	if rec.SessionSeq > 0 {
		add(rec.SessionSeq, "session.updated.1", sessionData{SessionID: rec.Session.ID, Info: rec.Session})
	}
	for i, m := range rec.Messages {
		add(rec.MessageSeqs[i], "message.updated.1", messageData{SessionID: rec.Session.ID, Info: m.Info, Parts: m.Parts})
	}
	sort.Slice(events, func(i, j int) bool { return events[i].Seq < events[j].Seq })
	return events
}

// syncHistory answers POST /sync/history {"<session id>": <last seq>, …}:
// the events after those positions of the sessions listed, and every event
// of the sessions not listed.
func (s *Server) syncHistory(w http.ResponseWriter, r *http.Request) {
	var positions map[string]int64
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&positions); err != nil {
		badRequest(w, "the body must be a JSON object of session ids and positions", nil)
		return
	}
	s.mu.Lock()
	events := []syncEvent{}
	for id, rec := range s.store.records {
		after, listed := positions[id]
		if !listed {
			after = -1
		}
		events = append(events, rec.history(after)...)
	}
	s.mu.Unlock()
	writeJSON(w, 200, events)
}

// syncReplay answers POST /sync/replay {"directory", "events": […]}: the
// sessions of the events are made, or brought up to date, under their
// own ids. Replaying events again changes nothing.
func (s *Server) syncReplay(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Directory string          `json:"directory"`
		Events    []replayedEvent `json:"events"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 256<<20)).Decode(&in); err != nil {
		badRequest(w, "the body must be {\"directory\", \"events\": [...]}", nil)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	changed := map[string]*record{}
	for _, ev := range in.Events {
		rec := changed[ev.AggregateID]
		if rec == nil {
			if stored, ok := s.store.get(ev.AggregateID); ok {
				copied := *stored
				copied.Messages = append([]Message{}, stored.Messages...)
				copied.MessageSeqs = append([]int64{}, stored.MessageSeqs...)
				rec = &copied
			}
		}
		var err error
		if rec, err = apply(rec, ev, in.Directory); err != nil {
			badRequest(w, err.Error(), nil)
			return
		}
		changed[ev.AggregateID] = rec
	}
	for _, rec := range changed {
		if err := s.store.write(rec); err != nil {
			serverError(w, err)
			return
		}
		s.events.publish("session.updated", map[string]any{"sessionID": rec.Session.ID, "info": rec.Session})
	}
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte("{}"))
}

// apply is one replayed event on a session's record (nil: not made yet).
func apply(rec *record, ev replayedEvent, directory string) (*record, error) {
	switch ev.Type {
	case "session.created.1", "session.updated.1":
		var data sessionData
		if err := json.Unmarshal(ev.Data, &data); err != nil || data.Info.ID != ev.AggregateID {
			return nil, fmt.Errorf("event %s is not a session of %s", ev.ID, ev.AggregateID)
		}
		if data.Info.Directory == "" {
			data.Info.Directory = directory
		}
		if rec == nil {
			rec = &record{Fields: data.Fields}
		}
		rec.Session = data.Info
		if ev.Type == "session.updated.1" {
			rec.SessionSeq = max(rec.SessionSeq, ev.Seq)
		}
	case "message.updated.1":
		var data messageData
		if err := json.Unmarshal(ev.Data, &data); err != nil || data.Info.ID == "" {
			return nil, fmt.Errorf("event %s is not a message", ev.ID)
		}
		if rec == nil {
			return nil, fmt.Errorf("event %s is a message of %s, which is not made", ev.ID, ev.AggregateID)
		}
		message := Message{Info: data.Info, Parts: data.Parts}
		found := false
		for i := range rec.Messages {
			if rec.Messages[i].Info.ID == message.Info.ID {
				rec.Messages[i], rec.MessageSeqs[i], found = message, ev.Seq, true
			}
		}
		if !found {
			rec.Messages = append(rec.Messages, message)
			rec.MessageSeqs = append(rec.MessageSeqs, ev.Seq)
		}
	default:
		return nil, fmt.Errorf("event %s has a type this server does not know: %s", ev.ID, ev.Type)
	}
	rec.Seq = max(rec.Seq, ev.Seq)
	return rec, nil
}

// path answers GET /path: where the server works.
func (s *Server) path(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, 200, map[string]string{"directory": s.cfg.Directory, "worktree": s.cfg.Directory})
}

// currentProject answers GET /project/current: every session here is in
// the project "global".
func (s *Server) currentProject(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, 200, map[string]string{"id": "global", "worktree": s.cfg.Directory})
}

// status answers GET /session/status: the sessions answering a prompt
// (the others are idle, and not listed).
func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	out := map[string]any{}
	for id := range s.busy {
		out[id] = map[string]string{"type": "busy"}
	}
	s.mu.Unlock()
	writeJSON(w, 200, out)
}
