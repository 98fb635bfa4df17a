package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"
)

// stub is the synthetic upstream inside this program: just enough of the
// session API for the measurements that need an upstream whose own cost is
// negligible and known.
//
//	GET /global/health   200, for Caddy's health checks
//	GET /session/{id}    a small session object with that id (fills the
//	                     module's cache in the memory measurement)
//	GET /event?n=&interval=&id=[&start=]
//	                     an event stream: after server.connected and a pause
//	                     (until start, ns on the stub's clock, if given), n
//	                     events, one every interval, each flushed alone,
//	                     each naming the session id and carrying the time it
//	                     was sent (ns since epoch, this process's monotonic
//	                     clock)
//
// A stub that is one of several workers (every > 1) sends only its share of
// the n events: those whose number is phase modulo every, at the times the
// schedule gives them. Workers sharing an epoch and a start thus interleave
// into one stream with the same cadence as a lone stub's.
type stub struct {
	URL          string
	Addr         string // host:port, for Caddy's UPSTREAM
	epoch        time.Time
	every, phase int
	srv          *http.Server
}

func startStub() (*stub, error) { return startStubOf(time.Now(), 1, 0) }

// startStubOf starts a stub whose clock starts at epoch, and which sends the
// events numbered phase modulo every.
func startStubOf(epoch time.Time, every, phase int) (*stub, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &stub{Addr: ln.Addr().String(), epoch: epoch, every: every, phase: phase}
	s.URL = "http://" + s.Addr
	mux := http.NewServeMux()
	mux.HandleFunc("GET /global/health", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"healthy":true,"version":"stub"}`)
	})
	mux.HandleFunc("GET /session/{id}", s.session)
	mux.HandleFunc("GET /event", s.events)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

func (s *stub) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if s.srv.Shutdown(ctx) != nil {
		_ = s.srv.Close()
	}
}

// since is the stub's clock: what events carry and what readers compare with.
func (s *stub) since() int64 { return int64(time.Since(s.epoch)) }

func (s *stub) session(w http.ResponseWriter, r *http.Request) {
	body := fmt.Sprintf(`{"id":%q,"slug":"bench","version":"stub","projectID":"bench","directory":"/bench",`+
		`"title":"bench","time":{"created":1763900000000,"updated":1763900000000}}`, r.PathValue("id"))
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	_, _ = w.Write([]byte(body))
}

// streamStart is the pause between the request and the first measured
// event, so that the reader is waiting when events begin (and, through a
// fleet, the merged stream has subscribed to every worker).
const streamStart = 200 * time.Millisecond

func (s *stub) events(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	n, _ := strconv.Atoi(q.Get("n"))
	interval, _ := time.ParseDuration(q.Get("interval"))
	id := q.Get("id")
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	rc := http.NewResponseController(w)
	fmt.Fprint(w, "data: {\"type\":\"server.connected\",\"properties\":{}}\n\n")
	if rc.Flush() != nil {
		return
	}
	start := time.Now().Add(streamStart)
	if at, err := strconv.ParseInt(q.Get("start"), 10, 64); err == nil {
		start = s.epoch.Add(time.Duration(at))
	}
	select {
	case <-time.After(time.Until(start)):
	case <-r.Context().Done():
		return
	}
	buf := make([]byte, 0, 1024)
	for i := range n {
		if i%s.every != s.phase {
			continue
		}
		// Pace by the clock rather than by sleeping a fixed time, so that
		// oversleeping once does not slow every later event.
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			time.Sleep(wait)
		}
		buf = appendEvent(buf[:0], i, id, s.since())
		if _, err := w.Write(buf); err != nil {
			return
		}
		if rc.Flush() != nil {
			return
		}
	}
	// Open until the reader goes, as opencode's streams are: a subscription
	// shared by the module's clients outlives each of them.
	<-r.Context().Done()
}

// appendEvent is a message.part.updated event as opencode sends it while a
// reply streams in (about 400 bytes), naming the session twice and another
// session once, with the send time last.
func appendEvent(b []byte, i int, sessionID string, sent int64) []byte {
	b = fmt.Appendf(b, `data: {"id":"evt_df56f5ae%06dAbCdEfGhIj","type":"message.part.updated","properties":{"part":`+
		`{"id":"prt_df56f5ae%06dTextPart0001","sessionID":%q,"messageID":"msg_df56f5ae%06dAbCdEfGhIjKl",`+
		`"type":"text","text":"I will change the tests so that the ids they use are stable, then run them again.",`+
		`"time":{"start":1763900000000}},"delta":" again.","info":{"sessionID":%q,"parentID":"ses_df56f5b01a2cKd83JmQpLx0aZe"},`+
		`"sent":%d}}`+"\n\n", i, i, sessionID, i, sessionID, sent)
	return b
}
