package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// moveSizes are the sessions moved, by their number of messages.
var moveSizes = []int{10, 100, 1000}

// goalMoveRatio: a move through the admin API takes at most this many times
// the pull and replay of the same history done directly.
const goalMoveRatio = 1.2

// moveResult is, for one session size, each repeat's time of a move and of
// the direct copy it is compared with.
type moveResult struct {
	messages      int
	moves, copies []time.Duration
}

// measureMoves moves sessions of moveSizes messages between two native
// servers through one Caddy (mapping mode, lb_policy session_ids), and
// compares each move with what it cannot do without: POST /sync/history on
// the session's worker (listing the worker's other sessions, as a move
// does, so that only this one comes whole) and POST /sync/replay of it on
// the other. A move also checks the workers, waits until the session is
// idle, verifies every message arrived, switches the mapping and deletes
// the old copy; with no other Caddy on the storage it waits for none.
func (m *Main) measureMoves(ctx context.Context) ([]*moveResult, error) {
	var workers []string
	for i := range 2 {
		w, err := m.startNativeNamed(ctx, fmt.Sprintf("native-move%d", i+1))
		if err != nil {
			return nil, err
		}
		workers = append(workers, w.addr)
	}
	u := &upstream{name: "native×2 (moves)", addr: strings.Join(workers, " "), fleet: true}
	if err := m.withCaddys(ctx, u, viaMapping); err != nil {
		return nil, err
	}
	front, admin := u.base[viaMapping], u.admin(viaMapping)
	var results []*moveResult
	for _, size := range moveSizes {
		clientID := m.newID("move")
		if _, err := postSession(ctx, front, map[string]any{"id": clientID, "title": fmt.Sprintf("moved, %d messages", size)}); err != nil {
			return nil, err
		}
		at, realID, err := holderOf(ctx, workers, clientID)
		if err != nil {
			return nil, err
		}
		if err := seedMessages(ctx, at, realID, size); err != nil {
			return nil, err
		}
		r := &moveResult{messages: size}
		for run := range m.Config.Runs {
			other := workers[0]
			if other == at {
				other = workers[1]
			}
			took, err := copyDirectly(ctx, at, other, realID)
			if err != nil {
				return nil, fmt.Errorf("direct copy of %d messages: %w", size, err)
			}
			r.copies = append(r.copies, took)
			if err := send(ctx, http.MethodDelete, "http://"+other+"/session/"+realID, nil, nil); err != nil {
				return nil, err
			}
			started := time.Now()
			if err := send(ctx, http.MethodPost, admin+"/session_ids/move", map[string]any{"session": clientID, "to": other}, nil); err != nil {
				return nil, fmt.Errorf("move of %d messages (repeat %d): %w", size, run+1, err)
			}
			r.moves = append(r.moves, time.Since(started))
			at = other
		}
		logf("moves of %d messages: median %v, direct copy %v", size, medianDuration(r.moves), medianDuration(r.copies))
		results = append(results, r)
	}
	return results, nil
}

// seedMessages gives a session n messages, replayed onto its worker as the
// native server's history events (a user message and its answer, in turn).
func seedMessages(ctx context.Context, worker, sessionID string, n int) error {
	var history []map[string]any
	if err := send(ctx, http.MethodPost, "http://"+worker+"/sync/history", map[string]any{}, &history); err != nil {
		return err
	}
	var events []map[string]any
	for _, e := range history {
		if e["aggregate_id"] == sessionID {
			events = append(events, map[string]any{"id": e["id"], "aggregateID": sessionID, "seq": e["seq"], "type": e["type"], "data": e["data"]})
		}
	}
	for i := range n {
		id := fmt.Sprintf("msg_bench%08d", i)
		role, text := "user", fmt.Sprintf("question %d: %s", i, strings.Repeat("words ", 40))
		if i%2 == 1 {
			role, text = "assistant", fmt.Sprintf("answer %d: %s", i, strings.Repeat("more words ", 80))
		}
		events = append(events, map[string]any{
			"id": fmt.Sprintf("evt_bench_%d", i), "aggregateID": sessionID, "seq": 1000 + i, "type": "message.updated.1",
			"data": map[string]any{"sessionID": sessionID,
				"info":  map[string]any{"id": id, "sessionID": sessionID, "role": role, "time": map[string]any{"created": time.Now().UnixMilli()}},
				"parts": []any{map[string]any{"id": fmt.Sprintf("prt_bench%08d", i), "sessionID": sessionID, "messageID": id, "type": "text", "text": text}}},
		})
	}
	return send(ctx, http.MethodPost, "http://"+worker+"/sync/replay", map[string]any{"directory": "", "events": events}, nil)
}

// copyDirectly is the least a move does: pull the session's history and
// replay it on the other worker.
func copyDirectly(ctx context.Context, from, to, sessionID string) (time.Duration, error) {
	started := time.Now()
	var listed []struct {
		ID string `json:"id"`
	}
	if err := send(ctx, http.MethodGet, "http://"+from+"/session", nil, &listed); err != nil {
		return 0, err
	}
	positions := map[string]int64{}
	for _, s := range listed {
		if s.ID != sessionID {
			positions[s.ID] = 1 << 52
		}
	}
	var history []map[string]any
	if err := send(ctx, http.MethodPost, "http://"+from+"/sync/history", positions, &history); err != nil {
		return 0, err
	}
	events := make([]map[string]any, 0, len(history))
	for _, e := range history {
		events = append(events, map[string]any{"id": e["id"], "aggregateID": e["aggregate_id"], "seq": e["seq"], "type": e["type"], "data": e["data"]})
	}
	if err := send(ctx, http.MethodPost, "http://"+to+"/sync/replay", map[string]any{"directory": "", "events": events}, nil); err != nil {
		return 0, err
	}
	return time.Since(started), nil
}

// holderOf is the worker that has the session of a client id, and its
// real id there.
func holderOf(ctx context.Context, workers []string, clientID string) (worker, realID string, err error) {
	for _, w := range workers {
		var listed []struct {
			ID       string            `json:"id"`
			Metadata map[string]string `json:"metadata"`
		}
		if err := send(ctx, http.MethodGet, "http://"+w+"/session", nil, &listed); err != nil {
			return "", "", err
		}
		for _, s := range listed {
			if s.Metadata["clientSessionID"] == clientID {
				return w, s.ID, nil
			}
		}
	}
	return "", "", fmt.Errorf("no worker has the session of %s", clientID)
}

// send makes a request with a JSON body (if any), wants 2xx, and decodes
// the answer into out (if not nil).
func send(ctx context.Context, method, url string, body, out any) error {
	var reader io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return err
		}
		reader = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, reader)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %d %.300s", method, url, resp.StatusCode, raw)
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}

func medianDuration(ds []time.Duration) time.Duration {
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = float64(d)
	}
	return time.Duration(median(xs))
}

// reportMoves renders the moves' section.
func reportMoves(b *strings.Builder, v *verdict, results []*moveResult) {
	b.WriteString("\n## Moving a session (`POST /session_ids/move` between two native servers, one Caddy, mapping mode)\n\n")
	b.WriteString("Against the pull and replay of the same history done directly (POST /sync/history listing the worker's other sessions, " +
		"POST /sync/replay on the other worker), measured in the same repeat. A move also checks both workers, waits until the session " +
		"is idle, holds it, verifies every message arrived, switches the mapping and deletes the old copy.\n\n")
	b.WriteString("| messages | move p50 ms | direct copy p50 ms | ratio | target | result |\n|---:|---:|---:|---:|---|---|\n")
	for _, r := range results {
		ratios := make([]float64, len(r.moves))
		for i := range r.moves {
			ratios[i] = float64(r.moves[i]) / float64(r.copies[i])
		}
		ratio := median(ratios)
		fmt.Fprintf(b, "| %d | %.1f | %.1f | %.2f× | ≤ %.1f× | %s |\n", r.messages, ms(medianDuration(r.moves)), ms(medianDuration(r.copies)),
			ratio, goalMoveRatio, v.check(fmt.Sprintf("move of %d messages", r.messages), ratio <= goalMoveRatio))
	}
}
