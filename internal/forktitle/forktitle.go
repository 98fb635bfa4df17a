// Package forktitle is opencode's rule for the title of a fork (measured on
// 1.18.33): "<title> (fork #1)", and for a title "<base> (fork #N)" with a
// non-empty base and N in decimal digits, "<base> (fork #N+1)". The native
// server titles its forks by it, and the handler recognises by it the fork
// an interrupted fork made.
package forktitle

import (
	"math/big"
	"regexp"
)

var numbered = regexp.MustCompile(`^(.+) \(fork #([0-9]+)\)$`)

// Next returns the title opencode gives a fork of a session titled title.
func Next(title string) string {
	m := numbered.FindStringSubmatch(title)
	if m == nil {
		return title + " (fork #1)"
	}
	n, _ := new(big.Int).SetString(m[2], 10)
	return m[1] + " (fork #" + n.Add(n, big.NewInt(1)).String() + ")"
}
