package upstream

import (
	"bytes"
	"errors"
	"net/http"
)

// ReplayHeader marks an answer that returns what an earlier request made or
// got: a create of a session that exists, a retried keyed prompt.
const ReplayHeader = "Idempotent-Replayed"

// MaxAnswer bounds what an Answer buffers of a body.
const MaxAnswer = 64 << 20

// Answer is the response writer of a request of the module's own: it
// captures the status, the headers and the body, up to MaxAnswer.
//
// With Events set, a 200 answer is an event stream: its body is cut into
// whole events (each ending with a blank line), each handed to Events as a
// copy of its own as soon as it is complete, and nothing is buffered, so
// events of different workers never interleave mid-event. Any other answer
// (a refusal, an error) is captured as usual.
type Answer struct {
	Status int
	Body   bytes.Buffer

	// OnOpen, with Events, is called once when the stream is granted (200).
	OnOpen func()
	// Events receives each whole event of a granted stream; an error ends
	// the stream (the write fails).
	Events func(ev []byte) error

	header  http.Header
	opened  bool
	over    bool
	pending []byte // the start of an event not yet complete
}

// NewAnswer returns an answer with a status and headers (nil for none),
// to capture into (status 0) or to relay.
func NewAnswer(status int, header http.Header) *Answer {
	if header == nil {
		header = http.Header{}
	}
	return &Answer{Status: status, header: header}
}

// Header returns the answer's headers; the proxy copies the upstream's here.
func (a *Answer) Header() http.Header {
	if a.header == nil {
		a.header = http.Header{}
	}
	return a.header
}

// WriteHeader records the first final status.
func (a *Answer) WriteHeader(status int) {
	if a.Status != 0 || status < 200 {
		return
	}
	a.Status = status
	if status == http.StatusOK && a.Events != nil {
		a.opened = true
		if a.OnOpen != nil {
			a.OnOpen()
		}
	}
}

// Write captures body bytes, or passes on whole events of a granted stream.
func (a *Answer) Write(p []byte) (int, error) {
	if a.Status == 0 {
		a.WriteHeader(http.StatusOK)
	}
	if a.opened {
		if err := a.cutEvents(p); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	if a.Body.Len()+len(p) > MaxAnswer {
		a.over = true
		return 0, errors.New("upstream answer too large")
	}
	return a.Body.Write(p)
}

// cutEvents appends p to the event in progress and passes on each whole
// event, keeping the rest for the next write.
func (a *Answer) cutEvents(p []byte) error {
	a.pending = append(a.pending, p...)
	for {
		end := bytes.Index(a.pending, []byte("\n\n"))
		if end < 0 {
			return nil
		}
		ev := append([]byte(nil), a.pending[:end+2]...)
		a.pending = a.pending[end+2:]
		if err := a.Events(ev); err != nil {
			return err
		}
	}
}

// FlushError lets the proxy flush; events go on as they complete, and a
// buffered answer has nothing to flush to.
func (a *Answer) FlushError() error { return nil }

// OK reports a 2xx answer.
func (a *Answer) OK() bool { return a.Status >= 200 && a.Status < 300 }

// Opened reports whether an event stream was granted.
func (a *Answer) Opened() bool { return a.opened }

// Refusal is the answer when an event stream was not granted, else nil.
func (a *Answer) Refusal() *Answer {
	if a.opened || a.Status == 0 {
		return nil
	}
	return a
}
