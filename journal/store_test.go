package journal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/caddyserver/certmagic"
)

func events(session string, from, to int64) []Event {
	var out []Event
	for seq := from; seq <= to; seq++ {
		out = append(out, Event{ID: fmt.Sprintf("evt_%d", seq), AggregateID: session, Seq: seq, Type: "message.updated.1", Data: json.RawMessage(`{"n":` + fmt.Sprint(seq) + `}`)})
	}
	return out
}

func TestAJournalHoldsAWholeHistoryPulledInParts(t *testing.T) {
	ctx := context.Background()
	s := NewStore(&certmagic.FileStorage{Path: t.TempDir()}, "test", 1<<20)
	if _, ok, err := s.Position(ctx, "ses_a"); ok || err != nil {
		t.Fatalf("an empty journal has a position: %v %v", ok, err)
	}
	if err := s.Append(ctx, "ses_a", events("ses_a", 1, 3)); !errors.Is(err, ErrGap) {
		t.Fatalf("a journal that starts after seq 0: %v", err)
	}
	for _, part := range [][2]int64{{0, 5}, {6, 11}, {3, 15}} { // the last overlaps what is held
		if err := s.Append(ctx, "ses_a", events("ses_a", part[0], part[1])); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Append(ctx, "ses_a", events("ses_a", 0, 15)); err != nil {
		t.Fatalf("appending what is held again: %v", err)
	}
	if err := s.Append(ctx, "ses_a", events("ses_a", 18, 20)); !errors.Is(err, ErrGap) {
		t.Fatalf("a gap was accepted: %v", err)
	}
	if seq, ok, err := s.Position(ctx, "ses_a"); seq != 15 || !ok || err != nil {
		t.Fatalf("position %d %v %v, want 15", seq, ok, err)
	}
	got, err := s.Load(ctx, "ses_a")
	if err != nil || len(got) != 16 {
		t.Fatalf("loaded %d events (%v), want 16", len(got), err)
	}
	for i, e := range got {
		if e.Seq != int64(i) || string(e.Data) != fmt.Sprintf(`{"n":%d}`, i) {
			t.Fatalf("event %d is %+v", i, e)
		}
	}
	if err := s.Append(ctx, "ses_a", events("ses_b", 16, 16)); err == nil {
		t.Fatal("another session's event went into the journal")
	}
	if err := s.Remove(ctx, "ses_a"); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.Position(ctx, "ses_a"); ok {
		t.Fatal("a removed journal has a position")
	}
}

func TestAJournalPastItsLimitIsFullNotHalf(t *testing.T) {
	ctx := context.Background()
	s := NewStore(&certmagic.FileStorage{Path: t.TempDir()}, "test", 1000)
	if err := s.Append(ctx, "ses_a", events("ses_a", 0, 5)); err != nil {
		t.Fatal(err)
	}
	size, _ := s.Size(ctx, "ses_a")
	if size == 0 || size > 1000 {
		t.Fatalf("size %d", size)
	}
	if err := s.Append(ctx, "ses_a", events("ses_a", 6, 40)); !errors.Is(err, ErrFull) {
		t.Fatalf("past the limit: %v", err)
	}
	if _, err := s.Load(ctx, "ses_a"); !errors.Is(err, ErrFull) {
		t.Fatalf("a full journal loaded: %v", err)
	}
	if err := s.Append(ctx, "ses_a", events("ses_a", 6, 6)); !errors.Is(err, ErrFull) {
		t.Fatalf("a full journal took more: %v", err)
	}
	if err := s.SetHome(ctx, "ses_a", Home{Worker: "w1:1"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(ctx, "ses_b", events("ses_b", 0, 1)); err != nil {
		t.Fatal(err)
	}
	if err := s.SetHome(ctx, "ses_b", Home{Worker: "w1:1"}); err != nil {
		t.Fatal(err)
	}
	if ids, err := s.Unrehomable(ctx, "w1:1"); err != nil || len(ids) != 1 || ids[0] != "ses_a" {
		t.Fatalf("the sessions of w1 that cannot be re-homed: %v %v", ids, err)
	}
	if err := s.Remove(ctx, "ses_a"); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(ctx, "ses_a", events("ses_a", 0, 2)); err != nil {
		t.Fatalf("a removed journal starts again: %v", err)
	}
}

func TestTwoKeepersWritingAtOnceLeaveAWholeJournal(t *testing.T) {
	ctx := context.Background()
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	s := NewStore(storage, "test", 1<<20)
	if err := s.Append(ctx, "ses_a", events("ses_a", 0, 14)); err != nil {
		t.Fatal(err)
	}
	// Both read the journal up to 14, then each wrote what it pulled.
	for _, part := range [][2]int64{{15, 29}, {15, 31}} {
		raw, _ := json.Marshal(events("ses_a", part[0], part[1]))
		if err := storage.Store(ctx, fmt.Sprintf("session_ids/test/journal/ses_a/%d-%d", part[0], part[1]), raw); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Load(ctx, "ses_a")
	if err != nil || len(got) != 32 {
		t.Fatalf("loaded %d events (%v), want 32", len(got), err)
	}
	for i, e := range got {
		if e.Seq != int64(i) {
			t.Fatalf("event %d has seq %d", i, e.Seq)
		}
	}
	if seq, _, _ := s.Position(ctx, "ses_a"); seq != 31 {
		t.Fatalf("position %d, want 31", seq)
	}
}

// An upstream that keeps only each thing's last event (the native server)
// answers with seqs left out; what it answers after the journal's end is
// all it has, and is kept, gaps and all. A chunk lost from the middle is
// still told.
func TestAWorkersAnswerWithSeqsLeftOutIsKept(t *testing.T) {
	ctx := context.Background()
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	s := NewStore(storage, "test", 1<<20)
	sparse := func(seqs ...int64) []Event {
		var out []Event
		for _, seq := range seqs {
			out = append(out, events("ses_a", seq, seq)...)
		}
		return out
	}
	if err := s.AppendAfter(ctx, "ses_a", -1, sparse(0, 2, 5)); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendAfter(ctx, "ses_a", 5, sparse(8, 9)); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendAfter(ctx, "ses_a", 3, sparse(12)); !errors.Is(err, ErrGap) {
		t.Fatalf("an answer after a seq the journal does not end at: %v, want ErrGap", err)
	}
	if err := s.Append(ctx, "ses_a", sparse(11)); !errors.Is(err, ErrGap) {
		t.Fatalf("Append with a seq left out: %v, want ErrGap", err)
	}
	got, err := s.Load(ctx, "ses_a")
	if err != nil {
		t.Fatal(err)
	}
	var seqs []int64
	for _, e := range got {
		seqs = append(seqs, e.Seq)
	}
	if fmt.Sprint(seqs) != "[0 2 5 8 9]" {
		t.Fatalf("loaded %v", seqs)
	}
	if seq, ok, err := s.Position(ctx, "ses_a"); seq != 9 || !ok || err != nil {
		t.Fatalf("position %d %v %v", seq, ok, err)
	}
	if err := storage.Delete(ctx, "session_ids/test/journal/ses_a/0-5"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(ctx, "ses_a"); !errors.Is(err, ErrGap) {
		t.Fatalf("a journal that lost its first chunk loads: %v", err)
	}
}
