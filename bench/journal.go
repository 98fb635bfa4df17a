package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// journalTurns is how many prompt turns each repeat sends through each of
// the two Caddys of the journal's cost.
const journalTurns = 40

// goalJournalRatio: a prompt turn through a Caddy keeping the journal takes
// at most this many times one through a Caddy that does not (noise).
const goalJournalRatio = 1.10

// rehomeSizes are the numbers of sessions of a lost worker re-homed.
var rehomeSizes = []int{10, 100}

// journalResult is what the journal costs: prompt turns with and without
// it, the storage its sessions take, and the time to re-home a worker.
type journalResult struct {
	with, without []time.Duration // every turn's latency
	ratios        []float64       // each repeat's median ratio
	turns         int             // turns journaled in the one session measured
	turnBytes     int64           // what they take in storage
	sizes         []journalSize
	rehomes       []rehomeResult
}

// journalSize is the storage one session's journal takes.
type journalSize struct {
	messages int
	bytes    int64
}

// rehomeResult is, for one number of sessions, each repeat's re-home.
type rehomeResult struct {
	sessions int
	took     []time.Duration
}

// measureJournal measures the journal against the native server: prompt
// turns (POST /session/{id}/message, a reply in about a millisecond: the
// harshest case for a cost added after each turn) through a Caddy with
// journal on and one with it off, each in front of its own server,
// alternating; the journal's bytes per turn and by session size; and the
// admin API's re-home of a stopped worker's sessions onto the other.
func (m *Main) measureJournal(ctx context.Context) (*journalResult, error) {
	res := &journalResult{}
	on, err := m.startNativeNamed(ctx, "native-journal-on")
	if err != nil {
		return nil, err
	}
	off, err := m.startNativeNamed(ctx, "native-journal-off")
	if err != nil {
		return nil, err
	}
	on.fleet, off.fleet = true, true
	if err := m.withCaddys(ctx, on, viaJournal); err != nil {
		return nil, err
	}
	if err := m.withCaddys(ctx, off, viaMapping); err != nil {
		return nil, err
	}
	onFront, offFront := on.base[viaJournal], off.base[viaMapping]
	onID, offID := m.newID("journal"), m.newID("nojournal")
	for base, id := range map[string]string{onFront: onID, offFront: offID} {
		if _, err := postSession(ctx, base, map[string]any{"id": id}); err != nil {
			return nil, err
		}
	}
	turn := func(base, id string, n int) (time.Duration, error) {
		started := time.Now()
		err := send(ctx, http.MethodPost, base+"/session/"+id+"/message",
			map[string]any{"parts": []any{map[string]any{"type": "text", "text": fmt.Sprintf("turn %d: %s", n, strings.Repeat("words ", 40))}}}, nil)
		return time.Since(started), err
	}
	for run := range m.Config.Runs {
		var with, without []float64
		for i := range journalTurns {
			order := []bool{true, false}
			if i%2 == 1 {
				order = []bool{false, true}
			}
			for _, journaled := range order {
				base, id := offFront, offID
				if journaled {
					base, id = onFront, onID
				}
				took, err := turn(base, id, run*journalTurns+i)
				if err != nil {
					return nil, err
				}
				if journaled {
					res.with, with = append(res.with, took), append(with, float64(took))
				} else {
					res.without, without = append(res.without, took), append(without, float64(took))
				}
			}
		}
		res.ratios = append(res.ratios, median(with)/median(without))
	}
	res.turns = m.Config.Runs * journalTurns

	// Storage: the measured session, and sessions of 10, 100 and 1000
	// messages, each prompted once so that its worker says it is idle.
	sized := map[int]string{}
	for _, size := range moveSizes {
		id := m.newID("journalsize")
		if _, err := postSession(ctx, onFront, map[string]any{"id": id}); err != nil {
			return nil, err
		}
		_, realID, err := holderOf(ctx, []string{on.addr}, id)
		if err != nil {
			return nil, err
		}
		if err := seedMessages(ctx, on.addr, realID, size); err != nil {
			return nil, err
		}
		if _, err := turn(onFront, id, 0); err != nil {
			return nil, err
		}
		sized[size] = realID
	}
	time.Sleep(2 * time.Second) // the pull after idle, and the trailing one
	data := on.caddys[viaJournal].Data
	_, measured, err := holderOf(ctx, []string{on.addr}, onID)
	if err != nil {
		return nil, err
	}
	if res.turnBytes, err = journalBytes(data, measured); err != nil {
		return nil, err
	}
	for _, size := range moveSizes {
		b, err := journalBytes(data, sized[size])
		if err != nil {
			return nil, err
		}
		res.sizes = append(res.sizes, journalSize{messages: size + 2, bytes: b})
	}
	for _, u := range []*upstream{on, off} {
		for _, c := range u.caddys {
			c.stop()
		}
		u.proc.stop()
	}

	for _, n := range rehomeSizes {
		r := rehomeResult{sessions: n}
		for run := range m.Config.Runs {
			took, err := m.rehomeOnce(ctx, n, run)
			if err != nil {
				return nil, fmt.Errorf("re-home of %d sessions: %w", n, err)
			}
			r.took = append(r.took, took)
		}
		logf("re-home of %d sessions: median %v", n, medianDuration(r.took))
		res.rehomes = append(res.rehomes, r)
	}
	logf("journal: prompt turn p50 %v with, %v without; %d bytes for %d turns", medianDuration(res.with), medianDuration(res.without), res.turnBytes, res.turns)
	return res, nil
}

// rehomeOnce makes n sessions of one turn on the first of two native
// servers behind one Caddy keeping the journal, stops that server, and
// times POST /session_ids/rehome of it once its health checks fail.
func (m *Main) rehomeOnce(ctx context.Context, n, run int) (time.Duration, error) {
	var workers []*upstream
	for i := range 2 {
		w, err := m.startNativeNamed(ctx, fmt.Sprintf("native-rehome%d-%d-%d", n, run, i))
		if err != nil {
			return 0, err
		}
		workers = append(workers, w)
	}
	u := &upstream{name: fmt.Sprintf("native×2 (re-home %d, %d)", n, run), addr: workers[0].addr + " " + workers[1].addr, fleet: true}
	if err := m.withCaddys(ctx, u, viaJournal); err != nil {
		return 0, err
	}
	c := u.caddys[viaJournal]
	defer func() {
		c.stop()
		for _, w := range workers {
			w.proc.stop()
		}
	}()
	front := u.base[viaJournal]
	var reals []string
	for range n {
		id := m.newID("rehome")
		if _, err := postSession(ctx, front, map[string]any{"id": id}); err != nil {
			return 0, err
		}
		if err := send(ctx, http.MethodPost, front+"/session/"+id+"/message", map[string]any{"parts": []any{map[string]any{"type": "text", "text": "one turn"}}}, nil); err != nil {
			return 0, err
		}
		_, realID, err := holderOf(ctx, []string{workers[0].addr}, id)
		if err != nil {
			return 0, err
		}
		reals = append(reals, realID)
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		journaled := 0
		for _, id := range reals {
			if b, _ := journalBytes(c.Data, id); b > 0 {
				journaled++
			}
		}
		if journaled == n {
			break
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%d of %d sessions journaled after 30 s", journaled, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(1500 * time.Millisecond) // the trailing pull
	workers[0].proc.stop()
	body, _ := json.Marshal(map[string]any{"worker": workers[0].addr})
	for deadline := time.Now().Add(10 * time.Second); ; {
		started := time.Now()
		status, raw, err := post(ctx, c.Admin+"/session_ids/rehome", body)
		took := time.Since(started)
		switch {
		case err != nil:
			return 0, err
		case status == http.StatusConflict && time.Now().Before(deadline):
			time.Sleep(50 * time.Millisecond) // its health checks pass still
			continue
		case status != http.StatusOK:
			return 0, fmt.Errorf("POST /session_ids/rehome: %d %.300s", status, raw)
		}
		var out struct {
			Rehomed []any             `json:"rehomed"`
			Failed  map[string]string `json:"failed"`
		}
		if err := json.Unmarshal(raw, &out); err != nil {
			return 0, err
		}
		if len(out.Rehomed) != n || len(out.Failed) > 0 {
			return 0, fmt.Errorf("re-homed %d of %d: %v", len(out.Rehomed), n, out.Failed)
		}
		return took, nil
	}
}

// post sends a JSON body and returns the status and body, whatever they are.
func post(ctx context.Context, url string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp.StatusCode, raw, err
}

// journalBytes is what a session's journal takes in a Caddy's file storage.
func journalBytes(data, realID string) (int64, error) {
	dir := filepath.Join(data, "caddy", "session_ids", "default", "journal", realID)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var total int64
	for _, e := range entries {
		if info, err := e.Info(); err == nil && strings.Contains(e.Name(), "-") {
			total += info.Size()
		}
	}
	return total, nil
}

// reportJournal renders the journal's section.
func reportJournal(b *strings.Builder, v *verdict, r *journalResult) {
	b.WriteString("\n## The journal (`journal on`, native server, mapping mode)\n\n")
	b.WriteString("Prompt turns (`POST /session/{id}/message`, answered in about a millisecond: the harshest case for work done after each turn) " +
		"through a Caddy keeping the journal and through one that does not, each in front of its own native server, alternating.\n\n")
	b.WriteString("| turns | journal on p50 ms | journal off p50 ms | ratio | target | result |\n|---:|---:|---:|---:|---|---|\n")
	ratio := median(r.ratios)
	fmt.Fprintf(b, "| %d | %.2f | %.2f | %.2f× | ≤ %.2f× | %s |\n", len(r.with), ms(medianDuration(r.with)), ms(medianDuration(r.without)),
		ratio, goalJournalRatio, v.check("journal's cost per prompt turn", ratio <= goalJournalRatio))
	fmt.Fprintf(b, "\nStorage: %d turns of one session take %d bytes (%.0f per turn: a user message of 240 characters and the reply, with their parts, and the session's update).\n\n",
		r.turns, r.turnBytes, float64(r.turnBytes)/float64(max(r.turns, 1)))
	b.WriteString("| session of messages | journal bytes | bytes per message |\n|---:|---:|---:|\n")
	for _, s := range r.sizes {
		fmt.Fprintf(b, "| %d | %d | %.0f |\n", s.messages, s.bytes, float64(s.bytes)/float64(s.messages))
	}
	b.WriteString("\nRe-homing a stopped worker's sessions (`POST /session_ids/rehome`, one turn each, onto the other native server):\n\n")
	b.WriteString("| sessions | re-home p50 ms | per session ms |\n|---:|---:|---:|\n")
	for _, h := range r.rehomes {
		took := medianDuration(h.took)
		fmt.Fprintf(b, "| %d | %.0f | %.1f |\n", h.sessions, ms(took), ms(took)/float64(h.sessions))
	}
}
