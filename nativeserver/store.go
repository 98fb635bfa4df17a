package nativeserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// store keeps one JSON file per session under dir/sessions, written
// atomically (temporary file, fsync, rename, fsync of the folder), and a copy
// of everything in memory. It is not safe for concurrent use: the server
// holds its lock around every call.
type store struct {
	dir     string
	records map[string]*record
}

func openStore(dir string) (*store, error) {
	sessions := filepath.Join(dir, "sessions")
	if err := os.MkdirAll(sessions, 0o700); err != nil {
		return nil, fmt.Errorf("create data folder: %w", err)
	}
	entries, err := os.ReadDir(sessions)
	if err != nil {
		return nil, fmt.Errorf("read data folder: %w", err)
	}
	s := &store{dir: sessions, records: map[string]*record{}}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".json") {
			continue // a temporary file left by a crash mid-write
		}
		raw, err := os.ReadFile(filepath.Join(sessions, name))
		if err != nil {
			return nil, err
		}
		rec := new(record)
		if err := json.Unmarshal(raw, rec); err != nil {
			return nil, fmt.Errorf("decode %s: %w", name, err)
		}
		sequence(nil, rec) // records written before histories had positions
		s.records[rec.Session.ID] = rec
	}
	return s, nil
}

func (s *store) get(id string) (*record, bool) {
	rec, ok := s.records[id]
	return rec, ok
}

// put writes a record durably before it becomes visible, giving what
// changed since the stored one its history positions.
func (s *store) put(rec *record) error {
	sequence(s.records[rec.Session.ID], rec)
	return s.write(rec)
}

// write writes a record as it is (a replay brings its positions).
func (s *store) write(rec *record) error {
	raw, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	final := filepath.Join(s.dir, rec.Session.ID+".json")
	tmp, err := os.CreateTemp(s.dir, rec.Session.ID+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(raw); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return err
	}
	if err := syncDir(s.dir); err != nil {
		return err
	}
	s.records[rec.Session.ID] = rec
	return nil
}

func (s *store) remove(id string) error {
	err := os.Remove(filepath.Join(s.dir, id+".json"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	delete(s.records, id)
	return syncDir(s.dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
