package upstream

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/sessionid/caddy-sessionid/internal/apierror"
)

// ErrBodyTooLarge and ErrBodyEncoding are refusals of a request body.
var (
	ErrBodyTooLarge = errors.New("request body too large")
	ErrBodyEncoding = errors.New("unsupported request Content-Encoding")
)

// TooManyIDsError refuses a request that names more distinct session ids
// than the handler looks up for one request.
type TooManyIDsError struct{ Max int }

func (e TooManyIDsError) Error() string {
	return fmt.Sprintf("the request names more than %d distinct session ids, the most this proxy looks up for one request", e.Max)
}

// ReadBody reads a client's request body of at most limit bytes (after
// decoding gzip) and leaves the request without a Content-Encoding.
func ReadBody(r *http.Request, limit int64) ([]byte, error) {
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
		return nil, fmt.Errorf("%w %q", ErrBodyEncoding, enc)
	}
	body, err := io.ReadAll(io.LimitReader(src, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read request body: %w", err)
	}
	if int64(len(body)) > limit {
		return nil, ErrBodyTooLarge
	}
	r.Header.Del("Content-Encoding")
	return body, nil
}

// BodyRefused answers a request body ReadBody refused, limit being the one
// it was read with.
func BodyRefused(w http.ResponseWriter, err error, limit int64) {
	switch {
	case errors.Is(err, ErrBodyTooLarge):
		apierror.Write(w, http.StatusRequestEntityTooLarge, "PayloadTooLarge",
			fmt.Sprintf("request body is over the %d bytes this proxy reads", limit), nil)
	case errors.As(err, new(TooManyIDsError)):
		apierror.Write(w, http.StatusRequestEntityTooLarge, "PayloadTooLarge", err.Error(), nil)
	case errors.Is(err, ErrBodyEncoding):
		apierror.Write(w, http.StatusUnsupportedMediaType, "UnsupportedMediaType", err.Error(), nil)
	default:
		apierror.BadRequest(w, err.Error(), nil)
	}
}
