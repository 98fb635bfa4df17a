package nativeserver

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/sessionid/caddy-sessionid/idmap"
)

// event is opencode's bus envelope, as its GET /event sends it.
type event struct {
	ID         string `json:"id"`
	Type       string `json:"type"`
	Properties any    `json:"properties"`
}

// broker fans events out to the subscribers of GET /event. A subscriber too
// slow to take an event within a second is dropped rather than stall others.
type broker struct {
	mu   sync.Mutex
	subs map[chan []byte]struct{}
}

func newBroker() *broker { return &broker{subs: map[chan []byte]struct{}{}} }

func (b *broker) publish(typ string, properties any) {
	raw, _ := json.Marshal(event{ID: idmap.NewID("evt", false), Type: typ, Properties: properties})
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.subs {
		select {
		case ch <- raw:
		case <-time.After(time.Second):
			delete(b.subs, ch)
			close(ch)
		}
	}
}

func (b *broker) subscribe() chan []byte {
	ch := make(chan []byte, 256)
	b.mu.Lock()
	b.subs[ch] = struct{}{}
	b.mu.Unlock()
	return ch
}

func (b *broker) unsubscribe(ch chan []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.subs[ch]; ok {
		delete(b.subs, ch)
		close(ch)
	}
}

// serveEvents is GET /event: server-sent events, one flush per event, with a
// heartbeat comment every 10 s so idle connections stay open through proxies.
func (s *Server) serveEvents(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache, no-transform")
	w.Header().Set("X-Accel-Buffering", "no")
	ch := s.events.subscribe()
	defer s.events.unsubscribe(ch)
	rc := http.NewResponseController(w)
	connected, _ := json.Marshal(event{ID: idmap.NewID("evt", false), Type: "server.connected", Properties: map[string]any{}})
	fmt.Fprintf(w, "data: %s\n\n", connected)
	_ = rc.Flush()
	heartbeat := time.NewTicker(10 * time.Second)
	defer heartbeat.Stop()
	for {
		select {
		case raw, ok := <-ch:
			if !ok {
				return
			}
			fmt.Fprintf(w, "data: %s\n\n", raw)
		case <-heartbeat.C:
			fmt.Fprint(w, ": heartbeat\n\n")
		case <-r.Context().Done():
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}
