package main

import (
	"bufio"
	"bytes"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"
)

// TestFleetStubsShareOneSchedule keeps the merged-stream measurement fair:
// fleetSize stubs on one clock, each sending its share of the same n events,
// together send every event exactly once, so that the merged stream's client
// reads what a lone stub's does.
func TestFleetStubsShareOneSchedule(t *testing.T) {
	const n = 20
	epoch := time.Now()
	var got []int
	start := int64(time.Since(epoch)) + int64(50*time.Millisecond)
	for phase := range fleetSize {
		s, err := startStubOf(epoch, fleetSize, phase)
		if err != nil {
			t.Fatal(err)
		}
		defer s.close()
		q := url.Values{"n": {strconv.Itoa(n)}, "interval": {"1ms"}, "id": {"ses_x"}, "start": {strconv.FormatInt(start, 10)}}
		resp, err := http.Get(s.URL + "/event?" + q.Encode())
		if err != nil {
			t.Fatal(err)
		}
		number := regexp.MustCompile(`"id":"evt_df56f5ae(\d{6})`)
		share := 0 // this stub's events; its stream stays open after them, as opencode's does
		for i := range n {
			if i%fleetSize == phase {
				share++
			}
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		for seen := 0; seen < share && sc.Scan(); {
			if m := number.FindSubmatch(sc.Bytes()); m != nil {
				i, _ := strconv.Atoi(string(m[1]))
				if i%fleetSize != phase {
					t.Errorf("stub %d sent event %d", phase, i)
				}
				if !bytes.Contains(sc.Bytes(), []byte(`"sent":`)) {
					t.Errorf("event %d has no send time", i)
				}
				got = append(got, i)
				seen++
			}
		}
		resp.Body.Close()
	}
	slices.Sort(got)
	want := make([]int, n)
	for i := range want {
		want[i] = i
	}
	if !slices.Equal(got, want) {
		t.Fatalf("the stubs sent events %v, want each of 0..%d once", got, n-1)
	}
}

// TestFleetIsASection: the fleet measurements can be left out like any other.
func TestFleetIsASection(t *testing.T) {
	m := NewMain()
	if err := m.ParseFlags([]string{"-quick", "-skip", "fleet"}); err != nil {
		t.Fatal(err)
	}
	if !m.Skip["fleet"] {
		t.Fatal("-skip fleet did not skip the fleet")
	}
}
