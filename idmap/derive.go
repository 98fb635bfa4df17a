package idmap

import (
	"encoding/hex"
	"fmt"
	"math/big"
	"strings"

	"github.com/google/uuid"
)

// Derive returns the session id of name in namespace, in opencode's own shape
// (ses_ + 12 lowercase hex + 14 base62, 26 characters after the prefix):
//
//  1. u = UUIDv5(namespace, UTF-8 bytes of name)  (RFC 9562, SHA-1)
//  2. the 12 hex digits are u[0:6] in lowercase hex
//  3. the 14 base62 characters are u[6:16] read as one big-endian unsigned
//     number, written in base 62 with the alphabet 0-9A-Za-z, most
//     significant digit first, left-padded with "0" to 14 characters
//     (62^14 > 2^80, so 14 always suffice)
//
// The same (namespace, name) gives the same id in any language; see
// docs/derivation.md for the specification and test vectors.
func Derive(namespace uuid.UUID, name string) string {
	u := uuid.NewSHA1(namespace, []byte(name))
	n := new(big.Int).SetBytes(u[6:])
	tail := make([]byte, 14)
	base, rem := big.NewInt(62), new(big.Int)
	for i := len(tail) - 1; i >= 0; i-- {
		n.DivMod(n, base, rem)
		tail[i] = base62[rem.Int64()]
	}
	return Prefix + hex.EncodeToString(u[:6]) + string(tail)
}

// ParseNamespace reads a namespace as a UUID ("6ba7b810-9dad-11d1-80b4-00c04fd430c8"),
// or as a DNS name or URL turned into one by UUIDv5 in RFC 9562's namespaces:
// "dns:example.com", "url:https://example.com/workers".
func ParseNamespace(s string) (uuid.UUID, error) {
	if name, ok := strings.CutPrefix(s, "dns:"); ok && name != "" {
		return uuid.NewSHA1(uuid.NameSpaceDNS, []byte(name)), nil
	}
	if name, ok := strings.CutPrefix(s, "url:"); ok && name != "" {
		return uuid.NewSHA1(uuid.NameSpaceURL, []byte(name)), nil
	}
	u, err := uuid.Parse(s)
	if err != nil {
		return uuid.Nil, fmt.Errorf("namespace %q is neither a UUID nor dns:<name> nor url:<url>", s)
	}
	return u, nil
}
