package caddymodule

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"

	"go.uber.org/zap"

	"github.com/sessionid/caddy-sessionid/idmap"
)

// sessionPathPrefixes are the route families whose next path segment is a
// session id: OpenCode's v1 routes, its newer /api routes and its
// experimental ones.
var sessionPathPrefixes = []string{"/session/", "/api/session/", "/experimental/session/"}

// sessionSegment finds the session id in a path like /session/{id}/message,
// returning its bounds, or ok false for other paths.
func sessionSegment(path string) (start, end int, ok bool) {
	for _, prefix := range sessionPathPrefixes {
		if !strings.HasPrefix(path, prefix) {
			continue
		}
		start = len(prefix)
		end = strings.IndexByte(path[start:], '/')
		if end < 0 {
			end = len(path)
		} else {
			end += start
		}
		return start, end, end > start
	}
	return 0, 0, false
}

// rewriteSessionPath replaces a mapped client id in the session segment of a
// URL's path (/session/{id}/… or /api/session/{id}/…) by its real id, in
// Path and, where the path has one, in its escaped form RawPath, so that
// encoded characters elsewhere in the path survive as they were.
func rewriteSessionPath(u *url.URL, resolve func(id string) (string, bool, error)) error {
	start, end, ok := sessionSegment(u.Path)
	if !ok {
		return nil
	}
	id := u.Path[start:end]
	if idmap.Validate(id) != nil {
		return nil
	}
	realID, mapped, err := resolve(id)
	if err != nil || !mapped {
		return err
	}
	if u.RawPath != "" {
		s, e, ok := sessionSegment(u.RawPath)
		if !ok || u.RawPath[s:e] != id {
			// The segment is escaped differently: drop the escaped form.
			u.RawPath = ""
		} else {
			u.RawPath = u.RawPath[:s] + realID + u.RawPath[e:]
		}
	}
	u.Path = u.Path[:start] + realID + u.Path[end:]
	return nil
}

// lookupFunc adapts an index lookup to the rewriter, remembering the first
// storage error so the caller can refuse the request instead of passing an
// id through unrewritten.
type lookupFunc struct {
	resolve func(ctx context.Context, id string) (string, bool, error)
	ctx     context.Context
	err     error
}

func (l *lookupFunc) lookup(token []byte) (string, bool) {
	id, ok, err := l.resolve(l.ctx, string(token))
	if err != nil && l.err == nil {
		l.err = err
	}
	return id, ok && err == nil
}

// errBodyTooLarge and errBodyEncoding are refusals of a request body.
var (
	errBodyTooLarge = errors.New("request body too large")
	errBodyEncoding = errors.New("unsupported request Content-Encoding")
)

// readBody reads a request body of at most limit bytes (after decoding gzip)
// and leaves the request without a Content-Encoding.
func readBody(r *http.Request, limit int64) ([]byte, error) {
	var src io.Reader = r.Body
	switch enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(io.LimitReader(r.Body, limit+1))
		if err != nil {
			return nil, fmt.Errorf("decode gzip request body: %w", err)
		}
		defer zr.Close()
		src = zr
	default:
		return nil, fmt.Errorf("%w %q", errBodyEncoding, enc)
	}
	body, err := io.ReadAll(io.LimitReader(src, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read request body: %w", err)
	}
	if int64(len(body)) > limit {
		return nil, errBodyTooLarge
	}
	r.Header.Del("Content-Encoding")
	return body, nil
}

// writeBodyError answers a refused request body.
func (h *Handler) writeBodyError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, errBodyTooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, "PayloadTooLarge",
			fmt.Sprintf("request body is over the %d bytes this proxy reads", h.MaxBodySize), nil)
	case errors.Is(err, errBodyEncoding):
		writeError(w, http.StatusUnsupportedMediaType, "UnsupportedMediaType", err.Error(), nil)
	default:
		badRequest(w, err.Error(), nil)
	}
}

// rewritableBody reports whether a request body may carry ids: anything but
// uploads (multipart forms, octet streams, media).
func rewritableBody(r *http.Request) bool {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return false
	}
	media, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch {
	case strings.HasPrefix(media, "multipart/"), media == "application/octet-stream",
		strings.HasPrefix(media, "image/"), strings.HasPrefix(media, "audio/"), strings.HasPrefix(media, "video/"):
		return false
	}
	return true
}

// toUpstream rewrites the client ids a request carries into real ids: in the
// session segment of its path, in its query and in its body (already read,
// or read here). It answers the client itself and returns false when the
// request cannot be forwarded.
func (h *Handler) toUpstream(w http.ResponseWriter, r *http.Request, body []byte) bool {
	ctx := r.Context()
	lookup := &lookupFunc{resolve: h.index.RealOf, ctx: ctx}

	if err := rewriteSessionPath(r.URL, func(id string) (string, bool, error) { return h.index.RealOf(ctx, id) }); err != nil {
		h.logger.Error("mapping lookup failed", zap.Error(err))
		storageFailed(w, "session id mapping could not be read")
		return false
	}

	if strings.Contains(r.URL.RawQuery, idmap.Prefix) {
		if q, replaced := idmap.Replace([]byte(r.URL.RawQuery), lookup.lookup); replaced > 0 {
			r.URL.RawQuery = string(q)
		}
	}

	if body == nil && rewritableBody(r) {
		var err error
		if body, err = readBody(r, h.MaxBodySize); err != nil {
			h.writeBodyError(w, err)
			return false
		}
	}
	if body != nil {
		rewritten, replaced := idmap.Replace(body, lookup.lookup)
		h.countRewrite("request", len(body), replaced)
		setBody(r, rewritten)
		r.TransferEncoding = nil
	}

	if lookup.err != nil {
		h.logger.Error("mapping lookup failed", zap.Error(lookup.err))
		storageFailed(w, "session id mapping could not be read")
		return false
	}
	r.RequestURI = r.URL.RequestURI()
	// Ids in responses can be rewritten only in bytes the handler can read.
	r.Header.Del("Accept-Encoding")
	return true
}
