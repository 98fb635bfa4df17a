package idmap

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
)

// secretName is where the namespace's secret lives:
//
//	<root>/<namespace>/secret   32 random bytes
const secretName = "secret"

// Secret returns the namespace's secret, making it the first time: 32 random
// bytes every instance sharing the storage reads alike, which name callers
// in records (an HMAC of their credentials under it) without saying
// anything of the credentials to whoever reads the storage.
func (s *Store) Secret(ctx context.Context) ([]byte, error) {
	key := s.prefix + "/" + secretName
	if raw, err := s.load(ctx, key); err == nil && len(raw) == 32 {
		return raw, nil
	} else if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("load the namespace secret: %w", err)
	}
	lock := s.key("lock", "_secret")
	if err := s.storage.Lock(ctx, lock); err != nil {
		return nil, fmt.Errorf("lock the namespace secret: %w", err)
	}
	defer func() { _ = s.storage.Unlock(context.WithoutCancel(ctx), lock) }()
	if raw, err := s.load(ctx, key); err == nil && len(raw) == 32 {
		return raw, nil // another instance made it meanwhile
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	if err := s.put(ctx, key, secret); err != nil {
		return nil, fmt.Errorf("store the namespace secret: %w", err)
	}
	return secret, nil
}
