package keyspace_test

import (
	"fmt"

	"github.com/sluice-dev/sluice/pkg/keyspace"
)

func Example() {
	var p keyspace.Prefix // the default, "sluice"
	k := p.Provider("ibkr")
	fmt.Println(k.Scale)
	fmt.Println(k.Notify)
	fmt.Println(k.Replicas)
	fmt.Println(p.Pressure("store-0"))
	fmt.Println(p.PressureLevel("hard"))
	fmt.Println(keyspace.Prefix("staging").StreamRefused("ticks"))
	fmt.Println(keyspace.ValidName("ibkr"), keyspace.ValidName("ib{kr}"))
	// Output:
	// sluice:{ibkr}:scale
	// sluice:{ibkr}:notify
	// sluice:replicas:{ibkr}
	// sluice:pressure:{store-0}
	// sluice:pressure:hard
	// staging:stream:{ticks}:refused
	// true false
}
