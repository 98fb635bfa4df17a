package caddymodule

import (
	"bytes"
	"compress/gzip"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/sessionid/caddy-sessionid/idmap"
	"github.com/sessionid/caddy-sessionid/internal/upstream"
)

// How a response is passed to the client.
type responseMode int

const (
	undecided   responseMode = iota
	passThrough              // not ours to rewrite: bytes as they come
	streaming                // rewritten as it flows, without Content-Length
	buffering                // rewritten whole at the end, with an exact Content-Length
)

// rewritingWriter rewrites real ids into client ids in the JSON and
// event-stream responses that pass through it. It follows Caddy's encode
// handler: writes go through Write even when the proxy copies with ReadFrom,
// Flush flushes what can be decided and then the writer below, and Unwrap
// lets http.ResponseController reach the connection.
type rewritingWriter struct {
	w         http.ResponseWriter
	lookup    *lookupFunc
	maxBuffer int64
	report    func(bytes int, ids int64) // what went through the rewriter

	scanned int // bytes given to the rewriter
	mode    responseMode
	status  int
	stream  *idmap.Writer
	buf     bytes.Buffer
	gzipped bool
}

func (rw *rewritingWriter) Header() http.Header { return rw.w.Header() }

func (rw *rewritingWriter) WriteHeader(status int) {
	if rw.mode != undecided {
		return
	}
	if status < 200 { // informational responses pass, the real one follows
		rw.w.WriteHeader(status)
		return
	}
	rw.status = status
	rw.mode = rw.choose(status)
	switch rw.mode {
	case streaming:
		rw.Header().Del("Content-Length")
		rw.w.WriteHeader(status)
		rw.stream = idmap.NewWriter(rw.w, rw.lookup.lookup)
	case passThrough:
		rw.w.WriteHeader(status)
	}
}

// choose decides how to pass a response on from its status and headers.
func (rw *rewritingWriter) choose(status int) responseMode {
	h := rw.Header()
	if status == http.StatusNoContent || status == http.StatusNotModified {
		return passThrough
	}
	media, _, _ := mime.ParseMediaType(h.Get("Content-Type"))
	eventStream := media == "text/event-stream"
	if !eventStream && media != "application/json" && !strings.HasSuffix(media, "+json") {
		return passThrough
	}
	switch enc := strings.ToLower(h.Get("Content-Encoding")); enc {
	case "", "identity":
	case "gzip":
		// The handler asks for identity encoding, but an upstream may compress
		// anyway; such a body is decoded, rewritten and sent decoded.
		rw.gzipped = true
		return buffering
	default:
		return passThrough
	}
	if eventStream {
		return streaming
	}
	length, err := strconv.ParseInt(h.Get("Content-Length"), 10, 64)
	if err == nil && length <= rw.maxBuffer {
		return buffering
	}
	return streaming
}

func (rw *rewritingWriter) Write(p []byte) (int, error) {
	if rw.mode == undecided {
		rw.WriteHeader(http.StatusOK)
	}
	switch rw.mode {
	case streaming:
		rw.scanned += len(p)
		return rw.stream.Write(p)
	case buffering:
		if int64(rw.buf.Len()+len(p)) > rw.maxBuffer {
			// Larger than announced: give up on an exact length and stream.
			if err := rw.switchToStreaming(); err != nil {
				return 0, err
			}
			return rw.Write(p)
		}
		return rw.buf.Write(p)
	}
	return rw.w.Write(p)
}

// switchToStreaming writes out a buffer that outgrew its limit. A gzipped one
// cannot be rewritten in pieces and goes out as it is, still encoded.
func (rw *rewritingWriter) switchToStreaming() error {
	h := rw.Header()
	h.Del("Content-Length")
	if rw.gzipped {
		rw.mode = passThrough
		rw.w.WriteHeader(rw.status)
		_, err := rw.w.Write(rw.buf.Bytes())
		return err
	}
	rw.mode = streaming
	rw.w.WriteHeader(rw.status)
	rw.stream = idmap.NewWriter(rw.w, rw.lookup.lookup)
	_, err := rw.stream.Write(rw.buf.Bytes())
	rw.buf.Reset()
	return err
}

// ReadFrom makes io.Copy go through Write, so no body escapes rewriting.
func (rw *rewritingWriter) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(struct{ io.Writer }{rw}, r)
}

// FlushError passes on what has been decided and flushes the writer below.
// A buffered response is not flushed: it is written whole by finish.
func (rw *rewritingWriter) FlushError() error {
	if rw.mode == buffering {
		return nil
	}
	if rw.mode == undecided {
		rw.WriteHeader(http.StatusOK)
	}
	return http.NewResponseController(rw.w).Flush()
}

// Flush is FlushError for callers that use http.Flusher.
func (rw *rewritingWriter) Flush() { _ = rw.FlushError() }

// Unwrap returns the writer below, for http.ResponseController.
func (rw *rewritingWriter) Unwrap() http.ResponseWriter { return rw.w }

// finish writes whatever is held: the last bytes of a stream, or a whole
// buffered body with its new length.
func (rw *rewritingWriter) finish() error {
	switch rw.mode {
	case streaming:
		err := rw.stream.Close()
		rw.finished(rw.scanned, rw.stream.Replaced())
		return err
	case buffering:
		body := rw.buf.Bytes()
		h := rw.Header()
		if rw.gzipped {
			decoded, err := gunzip(body, rw.maxBuffer)
			if err != nil { // not what it claims to be: pass it on untouched
				rw.w.WriteHeader(rw.status)
				_, err = rw.w.Write(body)
				return err
			}
			body = decoded
			h.Del("Content-Encoding")
		}
		out, replaced := idmap.Replace(body, rw.lookup.lookup)
		rw.finished(len(body), replaced)
		h.Set("Content-Length", strconv.Itoa(len(out)))
		rw.w.WriteHeader(rw.status)
		_, err := rw.w.Write(out)
		return err
	}
	return nil
}

func (rw *rewritingWriter) finished(bytes int, ids int64) {
	if rw.report != nil {
		rw.report(bytes, ids)
	}
}

func gunzip(b []byte, limit int64) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	defer zr.Close()
	out, err := io.ReadAll(io.LimitReader(zr, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(out)) > limit {
		return nil, upstream.ErrBodyTooLarge
	}
	return out, nil
}
