package move

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"
)

// Copy is one session to put on another worker: its real id (the same on
// both: a replay keeps it) and the workers.
type Copy struct {
	Session  string
	From, To string
}

// Copied is what a copy put on the target.
type Copied struct {
	// Sessions are the session and its descendants (children), in the order
	// they were replayed: parents first. After a failed copy, those that
	// may have a copy on the target.
	Sessions []string `json:"sessions"`
	Events   int      `json:"events"`
	Messages int      `json:"messages"`
	// Positions is, per session, the seq of the last event copied.
	Positions map[string]int64 `json:"-"`

	tree []session
	home homes
}

// ErrBusy: the session was still working when the wait for it ran out.
var ErrBusy = errors.New("the session is still busy")

// ErrCannotMove: a worker lacks the sync routes a move needs.
var ErrCannotMove = errors.New("the worker cannot move sessions")

// session is what a copy reads of a session.
type session struct {
	ID        string `json:"id"`
	Directory string `json:"directory"`
}

// syncEvent is an event of /sync/history; replay takes the same with
// aggregateID in place of aggregate_id.
type syncEvent struct {
	ID          string          `json:"id"`
	AggregateID string          `json:"aggregate_id"`
	Seq         int64           `json:"seq"`
	Type        string          `json:"type"`
	Data        json.RawMessage `json:"data"`
}

type replayEvent struct {
	ID          string          `json:"id"`
	AggregateID string          `json:"aggregateID"`
	Seq         int64           `json:"seq"`
	Type        string          `json:"type"`
	Data        json.RawMessage `json:"data"`
}

// Event is one sync event of a session's history, as POST /sync/history
// gives it.
type Event struct {
	ID          string          `json:"id"`
	AggregateID string          `json:"aggregate_id"`
	Seq         int64           `json:"seq"`
	Type        string          `json:"type"`
	Data        json.RawMessage `json:"data"`
}

// Restore replays a session's history kept elsewhere (a journal) onto
// worker to, the way a move replays a copy: a session that was in fromHome,
// the working directory of the worker it was on, goes into to's working
// directory and project. It returns how many messages to then holds.
func (ws Workers) Restore(ctx context.Context, to, fromHome string, events []Event) (int, error) {
	if len(events) == 0 {
		return 0, errors.New("no history to restore")
	}
	if err := ws.CanMove(ctx, to); err != nil {
		return 0, err
	}
	home, err := ws.relocate(ctx, to, to)
	if err != nil {
		return 0, err
	}
	home.from = fromHome
	var created struct {
		Info session `json:"info"`
	}
	_ = json.Unmarshal(events[0].Data, &created)
	s := session{ID: events[0].AggregateID, Directory: created.Info.Directory}
	replay := make([]replayEvent, len(events))
	for i, e := range events {
		replay[i] = replayEvent{ID: e.ID, AggregateID: e.AggregateID, Seq: e.Seq, Type: e.Type, Data: e.Data}
	}
	copied := Copied{Positions: map[string]int64{}, home: home}
	if err := ws.replay(ctx, to, &copied, s, replay); err != nil {
		return 0, err
	}
	return ws.messageCount(ctx, to, s.ID)
}

// Run copies the session and its descendants from From to To and checks
// that the target holds every message the source does. It changes nothing
// on From. The caller has made sure they are idle (WaitIdle) and that
// nothing changes them meanwhile.
func (ws Workers) Run(ctx context.Context, c Copy) (Copied, error) {
	var out Copied
	if c.From == c.To {
		return out, fmt.Errorf("session %s is on %s already", c.Session, c.To)
	}
	for _, worker := range []string{c.From, c.To} {
		if err := ws.CanMove(ctx, worker); err != nil {
			return out, err
		}
	}
	tree, err := ws.tree(ctx, c.From, c.Session)
	if err != nil {
		return out, err
	}
	history, err := ws.history(ctx, c.From, tree, nil)
	if err != nil {
		return out, err
	}
	home, err := ws.relocate(ctx, c.From, c.To)
	if err != nil {
		return out, err
	}
	out.Positions = map[string]int64{}
	out.tree, out.home = tree, home
	for _, s := range tree {
		if len(history[s.ID]) == 0 {
			return out, fmt.Errorf("%s's history on %s is empty", s.ID, c.From)
		}
		// Listed before the replay: one that fails half way leaves a copy
		// to delete.
		out.Sessions = append(out.Sessions, s.ID)
		if err := ws.replay(ctx, c.To, &out, s, history[s.ID]); err != nil {
			return out, err
		}
	}
	if err := ws.sameMessages(ctx, c, &out); err != nil {
		return out, err
	}
	return out, nil
}

// CatchUp copies onto To what reached the sessions on From after they were
// copied (by Run, or an earlier CatchUp) and reports how many events that
// was. Nothing must have changed them on To meanwhile: a replay continues
// each session's sequence where the copy left it.
func (ws Workers) CatchUp(ctx context.Context, c Copy, copied *Copied) (int, error) {
	history, err := ws.history(ctx, c.From, copied.tree, copied.Positions)
	if err != nil {
		return 0, err
	}
	events := 0
	for _, s := range copied.tree {
		if len(history[s.ID]) == 0 {
			continue
		}
		events += len(history[s.ID])
		if err := ws.replay(ctx, c.To, copied, s, history[s.ID]); err != nil {
			return events, err
		}
	}
	if events == 0 {
		return 0, nil
	}
	copied.Messages = 0
	return events, ws.sameMessages(ctx, c, copied)
}

// replay puts events of session s on worker to, in the target's working
// tree if s was in the source's, and advances the copy's position.
func (ws Workers) replay(ctx context.Context, to string, copied *Copied, s session, events []replayEvent) error {
	directory := s.Directory
	if directory == copied.home.from {
		// A session in the source's own working tree goes to the target's:
		// its instance, and the project its tools work in.
		directory = copied.home.to
		for i := range events {
			events[i].Data = copied.home.rewrite(events[i].Type, events[i].Data)
		}
	}
	body, _ := json.Marshal(map[string]any{"directory": directory, "events": events})
	if _, err := ws.ask(ctx, to, http.MethodPost, "/sync/replay", nil, body); err != nil {
		return fmt.Errorf("replaying %s: %w", s.ID, err)
	}
	copied.Events += len(events)
	copied.Positions[s.ID] = events[len(events)-1].Seq
	return nil
}

// sameMessages checks that the target holds as many messages of each
// session as the source, and counts them. The two workers are asked at
// once.
func (ws Workers) sameMessages(ctx context.Context, c Copy, copied *Copied) error {
	for _, s := range copied.tree {
		var from, to int
		var fromErr, toErr error
		var wg sync.WaitGroup
		wg.Go(func() { from, fromErr = ws.messageCount(ctx, c.From, s.ID) })
		to, toErr = ws.messageCount(ctx, c.To, s.ID)
		wg.Wait()
		if err := errors.Join(fromErr, toErr); err != nil {
			return err
		}
		if to != from {
			return fmt.Errorf("after the replay %s has %d messages on %s and %d on %s", s.ID, from, c.From, to, c.To)
		}
		copied.Messages += to
	}
	return nil
}

// CanMove checks that a worker has the sync routes a move needs, from its
// OpenAPI document (opencode 1.15 answers unknown routes with its web UI).
func (ws Workers) CanMove(ctx context.Context, worker string) error {
	if checked, ok := canMove.Load(worker); ok && time.Since(checked.(time.Time)) < canMoveFor {
		return nil
	}
	if err := ws.canMove(ctx, worker); err != nil {
		return err
	}
	canMove.Store(worker, time.Now())
	return nil
}

// canMove remembers, for canMoveFor, the workers found to have the sync
// routes: opencode's /doc is large, and a drain moves many sessions.
var canMove sync.Map

const canMoveFor = 30 * time.Second

func (ws Workers) canMove(ctx context.Context, worker string) error {
	status, raw, err := ws.Do(ctx, worker, http.MethodGet, "/doc", nil, nil)
	if err != nil {
		return err
	}
	var doc struct {
		Info struct {
			Version string `json:"version"`
		} `json:"info"`
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	_ = json.Unmarshal(raw, &doc)
	if status == http.StatusOK && doc.Paths["/sync/history"]["post"] != nil && doc.Paths["/sync/replay"]["post"] != nil {
		return nil
	}
	version := doc.Info.Version
	if _, raw, err := ws.Do(ctx, worker, http.MethodGet, "/global/health", nil, nil); err == nil {
		var health struct {
			Version string `json:"version"`
		}
		if json.Unmarshal(raw, &health) == nil && health.Version != "" {
			version = health.Version
		}
	}
	if version == "" {
		version = "unknown"
	}
	return fmt.Errorf("%w: %s (version %s) has no POST /sync/history and /sync/replay (opencode 1.17.9 or later has them)", ErrCannotMove, worker, version)
}

// Tree returns the ids of a session and its descendants on worker, parents
// first.
func (ws Workers) Tree(ctx context.Context, worker, id string) ([]string, error) {
	tree, err := ws.tree(ctx, worker, id)
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(tree))
	for i, s := range tree {
		ids[i] = s.ID
	}
	return ids, nil
}

// tree is the session and its descendants on worker, parents first.
func (ws Workers) tree(ctx context.Context, worker, id string) ([]session, error) {
	raw, err := ws.ask(ctx, worker, http.MethodGet, "/session/"+url.PathEscape(id), nil, nil)
	if err != nil {
		return nil, err
	}
	var root session
	if err := json.Unmarshal(raw, &root); err != nil || root.ID != id {
		return nil, fmt.Errorf("GET /session/%s on %s is not that session", id, worker)
	}
	tree := []session{root}
	for i := 0; i < len(tree); i++ {
		raw, err := ws.ask(ctx, worker, http.MethodGet, "/session/"+url.PathEscape(tree[i].ID)+"/children", url.Values{"directory": {tree[i].Directory}}, nil)
		if err != nil {
			return nil, err
		}
		var children []session
		if err := json.Unmarshal(raw, &children); err != nil {
			return nil, fmt.Errorf("the children of %s on %s are not a JSON array", tree[i].ID, worker)
		}
		tree = append(tree, children...)
	}
	return tree, nil
}

// WaitIdle waits until none of the sessions (a Tree) is busy on worker, for
// at most timeout (then ErrBusy).
func (ws Workers) WaitIdle(ctx context.Context, worker string, ids []string, timeout time.Duration) error {
	tree := make([]session, len(ids))
	for i, id := range ids {
		raw, err := ws.ask(ctx, worker, http.MethodGet, "/session/"+url.PathEscape(id), nil, nil)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(raw, &tree[i]); err != nil {
			return fmt.Errorf("GET /session/%s on %s is not a session", id, worker)
		}
	}
	return ws.waitIdle(ctx, worker, tree, timeout)
}

// Changed reports whether any of the sessions has events on worker after
// the positions a copy recorded: something reached the source after it.
func (ws Workers) Changed(ctx context.Context, worker string, positions map[string]int64) (bool, error) {
	tree := make([]session, 0, len(positions))
	for id := range positions {
		tree = append(tree, session{ID: id})
	}
	history, err := ws.history(ctx, worker, tree, positions)
	if err != nil {
		return false, err
	}
	for _, events := range history {
		if len(events) > 0 {
			return true, nil
		}
	}
	return false, nil
}

// waitIdle waits until none of the sessions is busy on worker.
func (ws Workers) waitIdle(ctx context.Context, worker string, tree []session, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		busy := ""
		directories := map[string]bool{}
		for _, s := range tree {
			directories[s.Directory] = true
		}
		for directory := range directories {
			raw, err := ws.ask(ctx, worker, http.MethodGet, "/session/status", url.Values{"directory": {directory}}, nil)
			if err != nil {
				return err
			}
			var status map[string]struct {
				Type string `json:"type"`
			}
			if err := json.Unmarshal(raw, &status); err != nil {
				return fmt.Errorf("GET /session/status on %s is not a JSON object", worker)
			}
			for _, s := range tree {
				if st, ok := status[s.ID]; ok && st.Type != "idle" {
					busy = s.ID
				}
			}
		}
		if busy == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w on %s after %v: %s", ErrBusy, worker, timeout, busy)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// everything is the position that asks /sync/history for nothing more of an
// aggregate (the positions are JSON numbers: exact to 2^53).
const everything = 1 << 52

// history pulls the histories of the sessions of tree from worker: every
// other aggregate the worker has is listed at a position past its end,
// since one not listed comes whole.
//
// With positions, only the events after them come of the sessions listed.
func (ws Workers) history(ctx context.Context, worker string, tree []session, positions map[string]int64) (map[string][]replayEvent, error) {
	wanted := map[string]bool{}
	for _, s := range tree {
		wanted[s.ID] = true
	}
	others := map[string]int64{}
	for id, seq := range positions {
		others[id] = seq
	}
	for _, path := range []string{"/experimental/session", "/session"} {
		status, raw, err := ws.Do(ctx, worker, http.MethodGet, path, url.Values{"archived": {"true"}, "limit": {"1000000"}}, nil)
		if err != nil {
			return nil, err
		}
		var listed []session
		if status != http.StatusOK || json.Unmarshal(raw, &listed) != nil {
			continue
		}
		for _, s := range listed {
			if !wanted[s.ID] {
				others[s.ID] = everything
			}
		}
		break
	}
	body, _ := json.Marshal(others)
	raw, err := ws.ask(ctx, worker, http.MethodPost, "/sync/history", nil, body)
	if err != nil {
		return nil, err
	}
	var events []syncEvent
	if err := json.Unmarshal(raw, &events); err != nil {
		return nil, fmt.Errorf("POST /sync/history on %s is not a JSON array", worker)
	}
	out := map[string][]replayEvent{}
	for _, e := range events {
		if wanted[e.AggregateID] {
			out[e.AggregateID] = append(out[e.AggregateID], replayEvent(e))
		}
	}
	for id := range out {
		sort.Slice(out[id], func(i, j int) bool { return out[id][i].Seq < out[id][j].Seq })
	}
	return out, nil
}

func (ws Workers) messageCount(ctx context.Context, worker, id string) (int, error) {
	raw, err := ws.ask(ctx, worker, http.MethodGet, "/session/"+url.PathEscape(id)+"/message", nil, nil)
	if err != nil {
		return 0, err
	}
	var messages []json.RawMessage
	if err := json.Unmarshal(raw, &messages); err != nil {
		return 0, fmt.Errorf("the messages of %s on %s are not a JSON array", id, worker)
	}
	return len(messages), nil
}

// homes are the working directories of a move's workers, and the target's
// project there.
type homes struct {
	from, to, project string
}

// relocate reads where each worker works (GET /path) and the target's
// project (GET /project/current).
func (ws Workers) relocate(ctx context.Context, from, to string) (homes, error) {
	var h homes
	for _, w := range []struct {
		worker string
		into   *string
	}{{from, &h.from}, {to, &h.to}} {
		raw, err := ws.ask(ctx, w.worker, http.MethodGet, "/path", nil, nil)
		if err != nil {
			return h, err
		}
		var path struct {
			Directory string `json:"directory"`
		}
		if json.Unmarshal(raw, &path) != nil || path.Directory == "" {
			return h, fmt.Errorf("GET /path on %s names no directory", w.worker)
		}
		*w.into = path.Directory
	}
	raw, err := ws.ask(ctx, to, http.MethodGet, "/project/current", url.Values{"directory": {h.to}}, nil)
	if err != nil {
		return h, err
	}
	var project struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(raw, &project) != nil || project.ID == "" {
		return h, fmt.Errorf("GET /project/current on %s names no project", to)
	}
	h.project = project.ID
	return h, nil
}

// rewrite puts a session's own events (session.created, session.updated)
// in the target's directory and project; other events pass as they are.
func (h homes) rewrite(eventType string, data json.RawMessage) json.RawMessage {
	if !strings.HasPrefix(eventType, "session.created.") && !strings.HasPrefix(eventType, "session.updated.") {
		return data
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal(data, &fields) != nil {
		return data
	}
	var info map[string]json.RawMessage
	if json.Unmarshal(fields["info"], &info) != nil || info == nil {
		return data
	}
	if _, ok := info["directory"]; ok {
		info["directory"], _ = json.Marshal(h.to)
	}
	if _, ok := info["projectID"]; ok {
		info["projectID"], _ = json.Marshal(h.project)
	}
	fields["info"], _ = json.Marshal(info)
	out, err := json.Marshal(fields)
	if err != nil {
		return data
	}
	return out
}
