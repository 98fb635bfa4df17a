package idmap

import "fmt"

// DuplicatePolicy says how a create is answered when its id is already mapped.
type DuplicatePolicy string

const (
	// DuplicatesMatch replays the existing session when the create provides the
	// same fields as the one that made it, and refuses it otherwise. It is the
	// default: it makes creation idempotent without hiding a conflicting intent.
	DuplicatesMatch DuplicatePolicy = "match"
	// DuplicatesReturn always replays the existing session.
	DuplicatesReturn DuplicatePolicy = "return"
	// DuplicatesReject always refuses a second create of an id.
	DuplicatesReject DuplicatePolicy = "reject"
)

// ParseDuplicatePolicy accepts "match", "return" or "reject"; empty means match.
func ParseDuplicatePolicy(s string) (DuplicatePolicy, error) {
	switch p := DuplicatePolicy(s); p {
	case "":
		return DuplicatesMatch, nil
	case DuplicatesMatch, DuplicatesReturn, DuplicatesReject:
		return p, nil
	}
	return "", fmt.Errorf("unknown duplicate policy %q: want match, return or reject", s)
}

// Decision is the outcome of a create for an id that is already mapped.
type Decision struct {
	Replay bool     // answer with the existing session
	Differ []string // with Replay false under DuplicatesMatch: the fields that differ
}

// Decide applies the policy to a create that provides requested for an id
// whose mapping was made with stored.
func (p DuplicatePolicy) Decide(stored, requested Fields) Decision {
	switch p {
	case DuplicatesReturn:
		return Decision{Replay: true}
	case DuplicatesReject:
		return Decision{}
	}
	differ := stored.Diff(requested)
	return Decision{Replay: len(differ) == 0, Differ: differ}
}
