// Package idcommand registers the `caddy session-id` command: deterministic
// session ids derived from names (docs/derivation.md), and ids checked
// against the grammar the session_ids handler enforces. It uses package
// idmap only.
package idcommand

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/sessionid/caddy-sessionid/idmap"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "session-id",
		Usage: "--namespace <uuid|dns:name|url:url> [--json] <name>... | --validate [--json] <id>...",
		Short: "Derives deterministic session ids, or checks ids against the grammar",
		Long: `
Derives the session id of each name in a namespace, as specified in
docs/derivation.md: UUIDv5(namespace, name) written in opencode's own id
shape, "ses_" + 12 lowercase hex + 14 base62 characters. The namespace is a
UUID, or dns:<name> or url:<url> for a UUIDv5 in RFC 9562's DNS or URL
namespace. Ids are printed one per line, in the order of the names.

With --validate, checks each argument against the id grammar the session_ids
handler enforces ("ses_" followed by 1 to 64 of [A-Za-z0-9_-]) and says why
an id is refused; the exit status is 1 if any is.

With --json, prints a JSON array instead.`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Flags().StringP("namespace", "n", "", "namespace: a UUID, dns:<name> or url:<url>")
			cmd.Flags().Bool("json", false, "print a JSON array")
			cmd.Flags().Bool("validate", false, "validate ids instead of deriving them")
			cmd.RunE = caddycmd.WrapCommandFuncForCobra(func(fl caddycmd.Flags) (int, error) {
				return runSessionID(os.Stdout, fl.String("namespace"), fl.Bool("json"), fl.Bool("validate"), fl.Args())
			})
		},
	})
}

// derivedID is one line of `caddy session-id --json`.
type derivedID struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	ID        string `json:"id"`
}

// checkedID is one line of `caddy session-id --validate --json`.
type checkedID struct {
	ID     string `json:"id"`
	Valid  bool   `json:"valid"`
	Rule   string `json:"rule,omitempty"`
	Reason string `json:"reason,omitempty"`
}

func runSessionID(w io.Writer, namespace string, asJSON, validate bool, args []string) (int, error) {
	if len(args) == 0 {
		return exitFailure, errors.New("give one or more names (or, with --validate, ids)")
	}
	var out []any
	invalid := 0
	if validate {
		for _, id := range args {
			c := checkedID{ID: id, Valid: true}
			var refused *idmap.InvalidIDError
			if errors.As(idmap.Validate(id), &refused) {
				c = checkedID{ID: id, Rule: refused.Rule, Reason: refused.Error()}
				invalid++
			}
			out = append(out, c)
			if !asJSON {
				if c.Valid {
					fmt.Fprintf(w, "%s: valid\n", id)
				} else {
					fmt.Fprintf(w, "%q: %s (rule %s)\n", id, c.Reason, c.Rule)
				}
			}
		}
	} else {
		if namespace == "" {
			return exitFailure, errors.New("--namespace is required to derive ids")
		}
		ns, err := idmap.ParseNamespace(namespace)
		if err != nil {
			return exitFailure, err
		}
		for _, name := range args {
			d := derivedID{Namespace: namespace, Name: name, ID: idmap.Derive(ns, name)}
			out = append(out, d)
			if !asJSON {
				fmt.Fprintln(w, d.ID)
			}
		}
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return exitFailure, err
		}
	}
	if invalid > 0 {
		// Caddy exits 0 for status 1 without an error.
		return exitFailure, fmt.Errorf("%d of %d ids are invalid", invalid, len(args))
	}
	return 0, nil
}

// exitFailure is the exit status of a command that failed.
const exitFailure = 1
