package caddymodule

import (
	"mime"
	"net/http"
	"net/url"
	"strings"

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
