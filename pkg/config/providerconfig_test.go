package config

import (
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/limiter"
)

// TestProviderConfig: the fields a layer sets win; the others come from
// the stored configuration when there is one, else the seed's defaults;
// every provider field can be kept.
func TestProviderConfig(t *testing.T) {
	s, err := Load(Sources{Environ: []string{"MDP_RATE_PROVIDER_NAMES=ibkr", "MDP_RATE_IBKR_COOLDOWN_SEC=60"}})
	if err != nil {
		t.Fatal(err)
	}
	stored := limiter.ProviderConfig{Capacity: 7, RefillRate: 3, Cooldown: time.Hour, BreakerThreshold: 2, BreakerTimeout: time.Minute, MaxScale: 4}
	want := stored
	want.Cooldown = 60 * time.Second
	if got := s.ProviderConfig("ibkr", &stored); got != want {
		t.Errorf("ibkr over stored: %+v, want %+v", got, want)
	}
	def := limiter.DefaultProviderConfig()
	def.Cooldown = 60 * time.Second
	if got := s.ProviderConfig("ibkr", nil); got != def {
		t.Errorf("ibkr, new: %+v, want %+v", got, def)
	}
	if got := s.ProviderConfig("other", &stored); got != stored {
		t.Errorf("a provider no layer names, stored: %+v, want the stored %+v", got, stored)
	}
	if got := s.ProviderConfig("other", nil); got != limiter.DefaultProviderConfig() {
		t.Errorf("a provider no layer names, new: %+v, want the defaults", got)
	}
	for _, f := range providerFields {
		if keepStored[f.Name] == nil {
			t.Errorf("provider field %s cannot be kept from the stored configuration", f.Name)
		}
	}
}
