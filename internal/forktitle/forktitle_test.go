package forktitle

import "testing"

// The cases are what opencode 1.18.33 answered to forks of sessions with
// these titles.
func TestNextIsOpencodesForkTitle(t *testing.T) {
	for title, want := range map[string]string{
		"p":                     "p (fork #1)",
		"p (fork #1)":           "p (fork #2)",
		"q (fork #9)":           "q (fork #10)",
		"q (fork #x)":           "q (fork #x) (fork #1)",
		"":                      " (fork #1)",
		"a (fork #1) (b)":       "a (fork #1) (b) (fork #1)",
		"a (fork #01)":          "a (fork #2)",
		" (fork #3)":            " (fork #3) (fork #1)",
		"x (fork #2) (fork #3)": "x (fork #2) (fork #4)",
	} {
		if got := Next(title); got != want {
			t.Errorf("Next(%q) = %q, want %q", title, got, want)
		}
	}
}
