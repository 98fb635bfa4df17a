package events

import (
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/sessionid/caddy-sessionid/eventlog"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// ResyncEventType is the type of the event that tells a client it has missed
// events and must read the state it follows again (session status and
// messages): its Last-Event-ID was too old, or not this stream's, or it
// read too slowly, or an upstream stream broke off.
const ResyncEventType = "session_ids.resync"

// maxBatch bounds the events read from a log and written in one go.
const maxBatch = 512

// greetWait is how long a resync waits for the greeting of a hub's upstream
// that has not greeted yet.
const greetWait = time.Second

// Serve serves GET /event or /global/event from the hub of its scope:
// the greeting, the events after the client's Last-Event-ID (or a resync
// event when those are not all retained), then the live stream, each event
// with its id.
func (s *Streams) Serve(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	registry := s.registry
	leave, refused := registry.admission.admit(r, s.config)
	if refused != "" {
		s.refuse(w, refused)
		return nil
	}
	defer leave()
	s.workers.Learn(r, next)
	scope := s.scopeOf(r, s.workers.Pool().Len() > 1)
	hub, refused := registry.acquire(s, r, next, scope)
	if hub == nil {
		s.refuse(w, refused)
		return nil
	}
	defer registry.release(hub)
	select {
	case <-hub.ready:
	case <-r.Context().Done():
		return nil
	}
	switch {
	case hub.failure != nil:
		// Caddy answers as it would have for the proxied request.
		return hub.failure
	case hub.refusal != nil:
		relayRefusal(w, hub.refusal)
		return nil
	}
	client := &eventClient{
		w:          w,
		controller: http.NewResponseController(w),
		hub:        hub,
		timeout:    time.Duration(s.config.WriteTimeout),
		namespace:  s.namespace,
	}
	return client.serve(r)
}

// relayRefusal passes on an upstream's refusal of a stream as it came.
func relayRefusal(w http.ResponseWriter, answer *upstream.Answer) {
	for name, values := range answer.Header() {
		switch http.CanonicalHeaderKey(name) {
		case "Content-Length", "Connection", "Transfer-Encoding", "Keep-Alive":
			continue
		}
		w.Header()[name] = values
	}
	w.Header().Set("Content-Length", strconv.Itoa(answer.Body.Len()))
	w.WriteHeader(answer.Status)
	_, _ = w.Write(answer.Body.Bytes())
}

// eventClient is one client reading a hub's log.
type eventClient struct {
	w          http.ResponseWriter
	controller *http.ResponseController
	hub        *eventHub
	timeout    time.Duration
	namespace  string
	out        []byte
}

func (c *eventClient) serve(r *http.Request) error {
	header := c.w.Header()
	header.Set("Content-Type", "text/event-stream")
	header.Set("Cache-Control", "no-cache, no-transform")
	header.Set("X-Accel-Buffering", "no")
	header.Del("Content-Length")
	c.w.WriteHeader(http.StatusOK)
	if err := c.controller.Flush(); err != nil {
		return nil // the client is gone
	}

	log := c.hub.log
	asked := lastEventID(r)
	// The greeting and the position are taken together, so that a greeting
	// that arrives meanwhile is either sent here or read live, once.
	c.hub.mu.Lock()
	greeted := c.hub.greeting != nil
	cursor, gap := log.Resume(asked)
	if greeted {
		// The greeting carries the client's position: a client that sees
		// nothing else and reconnects with it misses nothing.
		c.out = c.withID(c.out, cursor)
		c.out = append(c.out, c.hub.greeting...)
	}
	// Heartbeats and greetings before now are not replayed.
	replayedUpTo := log.Last()
	c.hub.mu.Unlock()
	// The resync follows the greeting, as on every stream: on a hub whose
	// upstream has not greeted yet (it has just been started), it waits
	// for the greeting, for the first event with an id, or for greetWait.
	resync := func() {
		c.resync(cursor, gap, asked)
		gap = eventlog.NoGap
	}
	var greetTimeout <-chan time.Time
	if gap != eventlog.NoGap {
		if greeted {
			resync()
		} else {
			timer := time.NewTimer(greetWait)
			defer timer.Stop()
			greetTimeout = timer.C
		}
	}
	if asked != "" && gap == eventlog.NoGap {
		eventMetrics.resumes.WithLabelValues(c.namespace).Inc()
	}
	for {
		res := log.Read(cursor, maxBatch)
		if res.Lost && gap != eventlog.NoGap {
			resync()
		}
		if res.Lost {
			// Too slow: what this client had not read yet is gone.
			lostAt := log.Last()
			if len(res.Events) > 0 {
				lostAt = res.Events[0].Seq - 1
			}
			c.resync(lostAt, eventlog.GapOverrun, log.ID(cursor))
			cursor = lostAt
		}
		for _, ev := range res.Events {
			if ev.Transient {
				cursor = ev.Seq
				if ev.Seq > replayedUpTo {
					// A heartbeat (or a late greeting) carries the client's
					// position too: all it has read, up to this one.
					c.out = c.withID(c.out, cursor)
					c.out = append(c.out, ev.Data...)
				}
				if gap != eventlog.NoGap && isGreeting(ev.Data) {
					resync()
				}
				continue
			}
			if gap != eventlog.NoGap {
				resync()
			}
			cursor = ev.Seq
			c.out = c.withID(c.out, ev.Seq)
			c.out = append(c.out, ev.Data...)
		}
		if err := c.flush(); err != nil {
			return nil // the client is gone, or too slow to write to: it may resume
		}
		if len(res.Events) == maxBatch {
			continue
		}
		if res.Closed {
			return nil // the hub ended: the client resumes with a new one
		}
		select {
		case <-res.Wake:
		case <-greetTimeout:
			if gap != eventlog.NoGap {
				resync()
			}
		case <-r.Context().Done():
			return nil
		}
	}
}

// withID appends the id line of position seq of the client's log: a valid
// Last-Event-ID meaning "everything after this".
func (c *eventClient) withID(out []byte, seq uint64) []byte {
	out = append(out, "id: "...)
	out = append(out, c.hub.log.ID(seq)...)
	return append(out, '\n')
}

// resync adds a resync event to what goes out, with the id of the event it
// stands after, so that a client resuming from it misses nothing further.
func (c *eventClient) resync(after uint64, gap eventlog.Gap, asked string) {
	eventMetrics.resyncs.WithLabelValues(c.namespace, string(gap)).Inc()
	c.out = append(c.out, "id: "...)
	c.out = append(c.out, c.hub.log.ID(after)...)
	c.out = append(c.out, '\n')
	c.out = append(c.out, resyncEvent(c.hub.scope.path, gap, asked, "")...)
}

// flush writes what is pending and flushes it, bounding how long a client
// that does not read may hold the writer.
func (c *eventClient) flush() error {
	if len(c.out) == 0 {
		return nil
	}
	deadline := c.timeout > 0 && c.controller.SetWriteDeadline(time.Now().Add(c.timeout)) == nil
	_, err := c.w.Write(c.out)
	if err == nil {
		err = c.controller.Flush()
	}
	c.out = c.out[:0]
	if deadline {
		_ = c.controller.SetWriteDeadline(time.Time{})
	}
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		eventMetrics.dropped.WithLabelValues(c.namespace).Inc()
	}
	return err
}

// resyncEvent is the event that tells a client to read state again, shaped
// like the stream's own events: {"type", "properties"} on /event, wrapped
// in {"payload"} on /global/event.
func resyncEvent(path string, gap eventlog.Gap, asked, worker string) []byte {
	properties := map[string]string{"reason": string(gap), "message": resyncMessages[gap]}
	if asked != "" {
		properties["lastEventID"] = asked
	}
	if worker != "" {
		properties["worker"] = worker
	}
	var event any = map[string]any{"type": ResyncEventType, "properties": properties}
	if path == "/global/event" {
		event = map[string]any{"payload": event}
	}
	data, _ := json.Marshal(event)
	return append(append([]byte("data: "), data...), '\n', '\n')
}

// resyncMessages say why, in words.
var resyncMessages = map[eventlog.Gap]string{
	eventlog.GapExpired:  "events after Last-Event-ID are no longer retained; read the state you follow again (session status and messages)",
	eventlog.GapUnknown:  "Last-Event-ID is not an event of this stream (it was started again, or the id comes from another Caddy instance); read the state you follow again (session status and messages)",
	eventlog.GapOverrun:  "this client read too slowly and missed events; read the state you follow again (session status and messages)",
	eventlog.GapUpstream: "the upstream's event stream broke off and was subscribed again; events in between may be missing; read the state you follow again (session status and messages)",
}
