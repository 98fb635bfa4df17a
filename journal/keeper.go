package journal

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/move"
)

// Keeper keeps the journals of the sessions on a set of workers at most
// one completed turn behind: it follows each worker's event stream, pulls
// the new sync events (POST /sync/history) when a session goes idle or a
// message completes, and at least every Interval, and appends them to the
// sessions' journals. A session deleted on the worker that holds it (not
// moved off it) loses its journal.
type Keeper struct {
	Store   *Store
	Workers move.Workers
	// Interval bounds the time between two pulls of a worker.
	Interval time.Duration
	// Own reports whether the deletion of a session on a worker is the
	// session's own: not a move's (relocation deletes the old copy), nor
	// that of a copy on a worker that does not hold the session. Only
	// then does its journal go. Nil: every deletion is.
	Own func(ctx context.Context, realID, worker string) bool
	// Here reports whether a worker is where the index has a session (or
	// the index has no worker for it): only then are the worker's events of
	// it journaled. A stale copy on a worker that came back after a
	// re-home is not the session. Nil: every worker is.
	Here   func(ctx context.Context, realID, worker string) bool
	Logger *zap.Logger

	mu      sync.Mutex
	workers map[string]*kept
	closed  bool
}

// kept is what the keeper knows of one worker.
type kept struct {
	cancel context.CancelFunc
	done   chan struct{}
	kick   chan struct{}

	mu sync.Mutex // positions; one pull at a time
	// positions are the sessions seen on the worker and the seq of the
	// last event their journal holds (everything: not journaled any more).
	positions map[string]int64
	seeded    bool   // positions read from the journals of the sessions the worker lists
	home      string // the worker's working directory (GET /path)
	listening chan struct{}
}

// everything stands for "every event" in a history request: an aggregate
// listed at it gets none.
const everything = 1 << 52

// Follow makes the keeper follow exactly these workers (dial addresses):
// new ones are followed, the others no longer.
func (k *Keeper) Follow(workers []string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return
	}
	if k.workers == nil {
		k.workers = map[string]*kept{}
	}
	wanted := map[string]bool{}
	for _, w := range workers {
		wanted[w] = true
		if k.workers[w] != nil {
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		kw := &kept{cancel: cancel, done: make(chan struct{}), kick: make(chan struct{}, 1), positions: map[string]int64{}, listening: make(chan struct{})}
		k.workers[w] = kw
		go k.run(ctx, w, kw)
	}
	for w, kw := range k.workers {
		if !wanted[w] {
			kw.cancel()
			delete(k.workers, w)
		}
	}
}

// Close stops following every worker and waits for the pulls under way.
func (k *Keeper) Close() {
	k.mu.Lock()
	k.closed = true
	workers := k.workers
	k.workers = nil
	k.mu.Unlock()
	for _, kw := range workers {
		kw.cancel()
		<-kw.done
	}
}

// Pull brings the journals of one followed worker's sessions up to date
// now.
func (k *Keeper) Pull(ctx context.Context, worker string) error {
	k.mu.Lock()
	kw := k.workers[worker]
	k.mu.Unlock()
	if kw == nil {
		return fmt.Errorf("%s is not followed", worker)
	}
	return k.pull(ctx, worker, kw)
}

func (k *Keeper) run(ctx context.Context, worker string, kw *kept) {
	go func() {
		defer close(kw.listening)
		k.listen(ctx, worker, kw)
	}()
	defer func() { <-kw.listening; close(kw.done) }()
	interval := k.Interval
	if interval <= 0 {
		interval = 30 * time.Second
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	// After a turn's pull, one more a little later: opencode writes the
	// last of a turn (the session's summary) just after it says idle.
	var trailing <-chan time.Time
	for {
		if err := k.pull(ctx, worker, kw); err != nil && ctx.Err() == nil {
			k.Logger.Debug("could not pull the sessions' histories of a worker", zap.String("worker", worker), zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		case <-trailing:
			trailing = nil
		case <-kw.kick:
			// A turn ended: what else ends with it comes in a few ms.
			select {
			case <-ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
			trailing = time.After(trailingPull)
		}
	}
}

// trailingPull is how long after a turn's pull the keeper pulls again.
const trailingPull = time.Second

// pull asks the worker for every event after the journals' positions (and
// the whole history of sessions not seen before) and appends them.
func (k *Keeper) pull(ctx context.Context, worker string, kw *kept) error {
	kw.mu.Lock()
	defer kw.mu.Unlock()
	if kw.home == "" {
		status, raw, err := k.Workers.Do(ctx, worker, http.MethodGet, "/path", nil, nil)
		var path struct {
			Directory string `json:"directory"`
		}
		if err != nil || status != http.StatusOK || json.Unmarshal(raw, &path) != nil || path.Directory == "" {
			return fmt.Errorf("GET /path on %s: %d %v", worker, status, err)
		}
		kw.home = path.Directory
	}
	if !kw.seeded {
		// After a start or a reload: ask for what the journals lack, not
		// for every session's whole history.
		if err := k.seed(ctx, worker, kw); err != nil {
			return err
		}
		kw.seeded = true
	}
	body, _ := json.Marshal(kw.positions)
	status, raw, err := k.Workers.Do(ctx, worker, http.MethodPost, "/sync/history", nil, body)
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return fmt.Errorf("POST /sync/history on %s answered %d", worker, status)
	}
	var events []Event
	if err := json.Unmarshal(raw, &events); err != nil {
		return fmt.Errorf("POST /sync/history on %s is not a JSON array", worker)
	}
	bySession := map[string][]Event{}
	for _, e := range events {
		bySession[e.AggregateID] = append(bySession[e.AggregateID], e)
	}
	for id, evs := range bySession {
		sort.Slice(evs, func(i, j int) bool { return evs[i].Seq < evs[j].Seq })
		if k.Here != nil && !k.Here(ctx, id, worker) {
			// A copy the index does not send requests to (stale, or a
			// move's not switched yet): not the session's history.
			kw.positions[id] = evs[len(evs)-1].Seq
			continue
		}
		after, seen := kw.positions[id]
		if !seen {
			after = -1 // came whole
		}
		switch err := k.Store.AppendAfter(ctx, id, after, evs); {
		case err == nil:
			kw.positions[id] = evs[len(evs)-1].Seq
			// Where it is now, for a re-home: it changed here.
			if err := k.Store.SetHome(ctx, id, Home{Worker: worker, Directory: kw.home}); err != nil {
				return err
			}
		case errors.Is(err, ErrFull):
			if kw.positions[id] != everything {
				full.WithLabelValues(k.Store.namespace).Inc()
				k.Logger.Warn("a session's journal passed its limit: it cannot be re-homed", zap.String("real_id", id), zap.String("worker", worker), zap.Int64("limit", k.Store.Limit))
				// Listed as such for its worker (GET /session_ids/workers).
				if err := k.Store.SetHome(ctx, id, Home{Worker: worker, Directory: kw.home}); err != nil {
					return err
				}
			}
			kw.positions[id] = everything
		case errors.Is(err, ErrGap):
			// The journal does not hold what this keeper thought (removed
			// meanwhile): start it again from the whole history.
			k.Logger.Info("a session's journal is started again", zap.String("real_id", id), zap.Error(err))
			_ = k.Store.Remove(ctx, id)
			delete(kw.positions, id)
		default:
			return err
		}
	}
	return nil
}

// seed sets the positions of the sessions the worker lists to what their
// journals hold.
func (k *Keeper) seed(ctx context.Context, worker string, kw *kept) error {
	status, raw, err := k.Workers.Do(ctx, worker, http.MethodGet, "/session", url.Values{"limit": {"1000000"}}, nil)
	if err != nil {
		return err
	}
	var listed []struct {
		ID string `json:"id"`
	}
	if status != http.StatusOK || json.Unmarshal(raw, &listed) != nil {
		return fmt.Errorf("GET /session on %s answered %d", worker, status)
	}
	for _, s := range listed {
		seq, ok, err := k.Store.Position(ctx, s.ID)
		switch {
		case errors.Is(err, ErrFull):
			kw.positions[s.ID] = everything
		case err != nil:
			return err
		case ok:
			kw.positions[s.ID] = seq
		}
	}
	return nil
}

// deleted finds the session of a session.deleted event, in either shape
// (/global/event wraps events in a payload; the type comes first).
var deleted = regexp.MustCompile(`"type":"session\.deleted".*?"sessionID":"(ses_[A-Za-z0-9_-]+)"`)

// listen follows the worker's event stream (/global/event, or /event where
// there is none) and kicks a pull when a turn ends; a session deleted there
// loses its journal. It reconnects until ctx is done.
func (k *Keeper) listen(ctx context.Context, worker string, kw *kept) {
	paths := []string{"/global/event", "/event"}
	for i := 0; ctx.Err() == nil; {
		err := k.stream(ctx, worker, paths[i], func(data []byte) {
			switch {
			case bytes.Contains(data, []byte(`"type":"session.idle"`)),
				bytes.Contains(data, []byte(`"type":"message.updated"`)) && bytes.Contains(data, []byte(`"completed":`)):
				select {
				case kw.kick <- struct{}{}:
				default:
				}
			case bytes.Contains(data, []byte(`"type":"session.deleted"`)):
				if m := deleted.FindSubmatch(data); m != nil {
					k.forget(ctx, worker, kw, string(m[1]))
				}
			}
		})
		var status statusError
		if errors.As(err, &status) && status == http.StatusNotFound && i+1 < len(paths) {
			i++
			continue
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// forget removes the journal of a session deleted on its worker, unless
// the deletion is not the session's own (see Own).
func (k *Keeper) forget(ctx context.Context, worker string, kw *kept, realID string) {
	if k.Own != nil && !k.Own(ctx, realID, worker) {
		return
	}
	kw.mu.Lock()
	delete(kw.positions, realID)
	kw.mu.Unlock()
	if err := k.Store.Remove(ctx, realID); err != nil {
		k.Logger.Warn("could not remove the journal of a deleted session", zap.String("real_id", realID), zap.Error(err))
	}
}

type statusError int

func (e statusError) Error() string { return fmt.Sprintf("status %d", int(e)) }

// stream reads one event stream of a worker until it ends, passing each
// event's data to each.
func (k *Keeper) stream(ctx context.Context, worker, path string, each func([]byte)) error {
	scheme := k.Workers.Scheme
	if scheme == "" {
		scheme = "http"
	}
	u := url.URL{Scheme: scheme, Host: worker, Path: path}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	if k.Workers.Authorization != "" {
		req.Header.Set("Authorization", k.Workers.Authorization)
	}
	resp, err := http.DefaultClient.Do(req) // no timeout: a stream lasts
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return statusError(resp.StatusCode)
	}
	scanner := bufio.NewScanner(resp.Body)
	scanner.Buffer(make([]byte, 64<<10), 16<<20)
	for scanner.Scan() {
		if data, ok := bytes.CutPrefix(scanner.Bytes(), []byte("data:")); ok {
			each(bytes.TrimSpace(data))
		}
	}
	return scanner.Err()
}
