package access

import (
	"net/http"
	"net/url"
	"strings"
)

// TokenParam is the query parameter opencode takes credentials in, for
// clients that cannot set headers (an EventSource): the base64 of
// user:password, as in a basic Authorization header.
const TokenParam = "auth_token"

// credentials returns what identifies a caller to the upstream, in one
// form for the two ways opencode takes one password: "basic:" and the token
// for an Authorization header "Basic <token>" alone or an auth_token alone
// (opencode reads auth_token=<token> as that header). Anything else (another
// scheme or spelling, both at once, several) is kept whole, as sent: two
// spellings the upstream might tell apart are never one caller. "" is a
// caller that sent none.
func credentials(header http.Header, query url.Values) string {
	authorization := header.Values("Authorization")
	tokens := query[TokenParam]
	switch {
	case len(authorization) == 0 && len(tokens) == 0:
		return ""
	case len(authorization) == 1 && len(tokens) == 0:
		if token, ok := strings.CutPrefix(authorization[0], "Basic "); ok && token != "" {
			return "basic:" + token
		}
	case len(authorization) == 0 && len(tokens) == 1 && tokens[0] != "":
		return "basic:" + tokens[0]
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
