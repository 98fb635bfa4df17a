package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// heapProfile saves the heap profile of the Caddy at admin (after a GC) as
// <folder>/<name>.pprof, when -profile names a folder.
func (m *Main) heapProfile(ctx context.Context, admin, name string) error {
	if m.Config.Profile == "" {
		return nil
	}
	return m.savePprof(ctx, admin+"/debug/pprof/heap?gc=1", name)
}

// profile starts a CPU profile of the Caddy at admin (its /debug/pprof/
// endpoint), as long as one measurement, when -profile names a folder. The
// returned function waits for it and writes it to <folder>/<name>.pprof.
// Read it with `go tool pprof -top <Caddy binary> <file>`.
func (m *Main) profile(ctx context.Context, admin, name string) (wait func() error) {
	if m.Config.Profile == "" || admin == "" {
		return func() error { return nil }
	}
	done := make(chan error, 1)
	go func() {
		done <- m.savePprof(ctx, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", admin, int(m.Config.Duration.Seconds())), name)
	}()
	return func() error { return <-done }
}

// savePprof GETs a profile from url into <folder>/<name>.pprof.
func (m *Main) savePprof(ctx context.Context, url, name string) error {
	ctx, cancel := context.WithTimeout(ctx, m.Config.Duration+30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("profile %s: %w", name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile %s: %s", name, resp.Status)
	}
	file := strings.NewReplacer(" ", "_", "/", "_", "{", "", "}", "", "(", "", ")", "").Replace(name) + ".pprof"
	f, err := os.Create(filepath.Join(m.Config.Profile, file))
	if err != nil {
		return err
	}
	_, err = io.Copy(f, resp.Body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
