package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/sessionid/caddy-sessionid/idmap"
)

// seedStorage is Caddy's file storage that writes without fsync: the files
// land exactly where certmagic.FileStorage reads them (it names them), but
// 200,000 of them take seconds instead of minutes. Only for seeding data a
// benchmark reads back; the module itself writes through Caddy's storage.
type seedStorage struct {
	*certmagic.FileStorage
}

func (s seedStorage) Store(_ context.Context, key string, value []byte) error {
	name := s.Filename(key)
	if err := os.WriteFile(name, value, 0o600); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(name), 0o700); err != nil {
		return err
	}
	return os.WriteFile(name, value, 0o600)
}

// mappingPair is one seeded mapping.
type mappingPair struct{ client, real string }

// seedMappings writes n mappings into the file storage at path (Caddy's
// $XDG_DATA_HOME/caddy) with the module's own Store, concurrently, and
// returns them.
func (m *Main) seedMappings(ctx context.Context, path string, n int) ([]mappingPair, error) {
	store := idmap.NewStore(seedStorage{&certmagic.FileStorage{Path: path}}, namespace)
	pairs := make([]mappingPair, n)
	created := time.Now().UTC()
	for i := range pairs {
		pairs[i] = mappingPair{client: fmt.Sprintf("ses_%s_rss%07d", m.nonce, i), real: idmap.NewID("ses", true)}
	}
	fields := idmap.Fields{"title": []byte(`"bench"`)}
	work := make(chan int)
	errs := make(chan error, seedWorkers)
	var wg sync.WaitGroup
	for range seedWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				mp := idmap.Mapping{ClientID: pairs[i].client, RealID: pairs[i].real, Fields: fields, Created: created}
				if err := store.Save(ctx, mp); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var err error
feed:
	for i := range pairs {
		select {
		case work <- i:
		case err = <-errs:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(work)
	wg.Wait()
	if err == nil && len(errs) > 0 {
		err = <-errs
	}
	return pairs, err
}

// seedWorkers is how many mappings are written at once.
const seedWorkers = 32
