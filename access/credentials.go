package access

import (
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
)

// TokenParam is the query parameter opencode takes credentials in, for
// clients that cannot set headers (an EventSource): the base64 of
// user:password, as in a basic Authorization header.
const TokenParam = "auth_token"

// credentials returns what identifies a caller to the upstream, in one
// form wherever the caller put it: "basic:" and the decoded user:password
// for a basic Authorization header or an auth_token alone (so the two ways
// of sending one password are one caller), the header and every token as
// sent when there are both or when they do not decode, and "" for a caller
// that sent none.
func credentials(header http.Header, query url.Values) string {
	authorization := header.Values("Authorization")
	tokens := query[TokenParam]
	switch {
	case len(authorization) == 0 && len(tokens) == 0:
		return ""
	case len(authorization) == 1 && len(tokens) == 0:
		if scheme, value, ok := strings.Cut(strings.TrimSpace(authorization[0]), " "); ok && strings.EqualFold(scheme, "basic") {
			if decoded, ok := decodeBasic(value); ok {
				return "basic:" + decoded
			}
		}
	case len(authorization) == 0 && len(tokens) == 1:
		if decoded, ok := decodeBasic(tokens[0]); ok {
			return "basic:" + decoded
		}
	}
	var b strings.Builder
	b.WriteString("raw")
	for _, v := range authorization {
		b.WriteString("\x00h:" + v)
	}
	for _, v := range tokens {
		b.WriteString("\x00q:" + v)
	}
	return b.String()
}

func decodeBasic(value string) (string, bool) {
	decoded, err := base64.StdEncoding.DecodeString(strings.TrimSpace(value))
	if err != nil {
		return "", false
	}
	return string(decoded), true
}
