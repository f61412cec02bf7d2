package provsim

import (
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)

func TestProviderEnforcesEachRule(t *testing.T) {
	now := t0
	p := New(Rules{Window: 10 * time.Second, WindowLimit: 6, KeyPeriod: 2 * time.Second, KeyLimit: 2,
		Identical: 15 * time.Second, Open: 3}, func() time.Time { return now })
	admit := func(key, ident string, cost int, want string) {
		t.Helper()
		if got := p.Admit(key, ident, cost); !strings.HasPrefix(got, want) || (want == "" && got != "") {
			t.Fatalf("at +%v: Admit(%s, %s, %d) broke %q, want %q", now.Sub(t0), key, ident, cost, got, want)
		}
	}
	admit("A", "a1", 2, "")
	admit("A", "a2", 1, "key")       // 3 units of A within 2 s
	admit("B", "b1", 1, "")          // 3 open
	admit("C", "c1", 1, "open")      // a fourth
	p.Done(3)                        // a1 and b1 answered
	admit("C", "a1", 1, "identical") // a1 again within 15 s
	now = now.Add(2 * time.Second)   // A's units out of its 2 s
	admit("A", "a3", 1, "")          // window: 4 units
	admit("C", "c2", 2, "")          // 6
	admit("D", "d1", 1, "window")    // 7 in 10 s
	now = t0.Add(10 * time.Second)   // a1's and b1's units left the window (at +10 s exactly)
	p.Done(3)
	admit("D", "d1", 2, "")
	now = t0.Add(15 * time.Second)
	admit("E", "a1", 1, "") // a1 again after 15 s
	st := p.Stats()
	if st.Violations != 4 || st.Requests != 6 || st.Units != 9 || st.MaxOpen != 3 ||
		st.ByRule["key"] != 1 || st.ByRule["open"] != 1 || st.ByRule["identical"] != 1 || st.ByRule["window"] != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestGrantViolations(t *testing.T) {
	now := t0.Add(time.Minute)
	p := New(Rules{Window: 10 * time.Second, WindowLimit: 2, KeyPeriod: time.Second, KeyLimit: 9,
		Identical: time.Second, Open: 9}, func() time.Time { return now })
	us := func(d time.Duration) int64 { return t0.Add(d).UnixMicro() }
	// Granted 0 s, 11 s, 12 s: fine by grant time, whatever order they arrive in.
	p.granted(us(12*time.Second), "A", "a3", 1)
	p.granted(us(0), "A", "a1", 1)
	p.granted(us(11*time.Second), "A", "a2", 1)
	if v := p.Stats().GrantViolations; len(v) != 0 {
		t.Fatalf("%v, want none", v)
	}
	p.granted(us(12500*time.Millisecond), "B", "a3", 1) // 3 in [2.5 s, 12.5 s], and a3 again within 1 s
	if v := p.Stats().GrantViolations; v["window"] != 1 || len(v) != 1 {
		t.Fatalf("%v, want one window violation (the window rule is checked first)", v)
	}
}

func TestMessageRuleCountsEveryRequest(t *testing.T) {
	now := t0
	p := New(Rules{Messages: 3, MessagesPer: time.Second, Window: time.Second, WindowLimit: 9, KeyPeriod: time.Second, KeyLimit: 9,
		Identical: time.Second, Open: 9}, func() time.Time { return now })
	if b := p.Admit("A", "a1", 2); b != "" {
		t.Fatalf("first historical request broke %q", b)
	}
	if b := p.AdmitLive(1); b != "" {
		t.Fatalf("a live request within the message rule broke %q", b)
	}
	if b := p.AdmitLive(1); b != "messages" {
		t.Fatalf("a fourth unit within 1 s broke %q, want messages", b)
	}
	if b := p.Admit("B", "b1", 1); b != "messages" {
		t.Fatalf("a historical request over the message rule broke %q, want messages", b)
	}
	now = t0.Add(time.Second) // the first three units leave at +1 s exactly
	if b := p.AdmitLive(3); b != "" {
		t.Fatalf("at +1 s: %q", b)
	}
	st := p.Stats()
	if st.Requests != 3 || st.Live != 2 || st.Units != 2 || st.ByRule["messages"] != 2 {
		t.Fatalf("stats %+v", st)
	}
}
