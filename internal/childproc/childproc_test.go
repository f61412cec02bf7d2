package childproc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain lets this test binary play a sluice service when
// CHILDPROC_SERVICE is set: it serves /metrics and /readyz on a loopback
// port, announces it, and on SIGTERM prints its final counts and exits; with
// CHILDPROC_SERVICE=crash it exits 3 once it has announced.
func TestMain(m *testing.M) {
	if mode := os.Getenv("CHILDPROC_SERVICE"); mode != "" {
		os.Exit(service(mode))
	}
	os.Exit(m.Run())
}

func service(mode string) int {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 1
	}
	http.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, "# HELP items_total items\nitems_total{id=\"a\"} 2\nitems_total{id=\"b\"} 3.5\nitems_total_more 100\nitems 7\n")
	})
	http.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	go http.Serve(ln, nil)
	fmt.Printf("{\"listening\": \"http://%s\"}\n", ln.Addr())
	fmt.Println("not json")
	if mode == "crash" {
		return 3
	}
	<-term
	fmt.Println(`{"appended": 12, "name": "x"}`)
	fmt.Println("a last line that is not a report")
	return 0
}

func start(t *testing.T, mode string) *Proc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p, err := Start(exe, "svc", EnvWith(os.Environ(), "CHILDPROC_SERVICE="+mode), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.Exited() == nil {
			p.Kill()
		}
	})
	return p
}

// TestProc runs a service as a process: Start returns once it announced
// its address; Metric sums the series of one metric, not of a metric whose
// name it prefixes; Ready follows /readyz; Stop's SIGTERM makes it print
// its final report, which Final finds behind the lines that are not one.
func TestProc(t *testing.T) {
	p := start(t, "serve")
	ctx := context.Background()
	if !strings.HasPrefix(p.URL, "http://127.0.0.1:") || !p.Ready(ctx) {
		t.Fatalf("url %q, ready %v", p.URL, p.Ready(ctx))
	}
	if v, err := p.Metric(ctx, "items_total"); err != nil || v != 5.5 {
		t.Fatalf("items_total = %v, %v; want 5.5", v, err)
	}
	if v, err := p.Metric(ctx, "items"); err != nil || v != 7 {
		t.Fatalf("items = %v, %v; want 7", v, err)
	}
	if p.Exited() != nil || p.Final() != nil {
		t.Fatalf("running: exited %v, final %v", p.Exited(), p.Final())
	}
	if err := p.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if f := p.Final(); f.Num("appended") != 12 || f.Num("name") != 0 || f.Num("missing") != 0 {
		t.Fatalf("final %v", f)
	}
	if !errors.Is(p.Exited(), ErrExited) || p.Ready(ctx) {
		t.Fatalf("stopped: exited %v, ready %v", p.Exited(), p.Ready(ctx))
	}
}

// TestProcExited: a service that exits on its own says so, with its exit.
func TestProcExited(t *testing.T) {
	p := start(t, "crash")
	deadline := time.Now().Add(30 * time.Second)
	for p.Exited() == nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := p.Exited(); !errors.Is(err, ErrExited) || !strings.Contains(err.Error(), "svc exited: exit status 3") {
		t.Fatalf("exited: %v", err)
	}
}

func TestEnvWith(t *testing.T) {
	got := EnvWith([]string{"A=1", "B=2", "C=3", "B=4"}, "B=x", "D=y")
	if want := []string{"A=1", "C=3", "B=x", "D=y"}; !slices.Equal(got, want) {
		b, _ := json.Marshal(got)
		t.Fatalf("EnvWith = %s, want %v", b, want)
	}
}
