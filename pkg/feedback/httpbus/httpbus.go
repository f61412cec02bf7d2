// Package httpbus carries pressure events over HTTP, for write coordinators
// in other languages or behind a firewall: a receiver (POST /feedback, with
// /healthz, /readyz and /metrics) that hands each valid event to a
// feedback.Deliver, and a Client, a feedback.Publisher that posts to it.
package httpbus

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/internal/opts"
	"github.com/sluice-dev/sluice/pkg/internal/promutil"
)

// ReceiverOptions configure the HTTP receiver. Only Deliver is required:
// every other zero field takes the default its comment gives.
type ReceiverOptions struct {
	// Deliver receives every valid event (a Handler's Handle, or a
	// redisbus.Publisher's Publish to fan it out to every replica). Required.
	Deliver feedback.Deliver
	// Token, when set, is required as "Authorization: Bearer <token>";
	// default none.
	Token string
	// MaxBody is the largest request body accepted; default 64 KiB.
	MaxBody int64
	// Gatherer is served on /metrics; nil serves 404 there.
	Gatherer prometheus.Gatherer
	// Ready is asked by /readyz (e.g. ping Redis); nil means always ready.
	Ready func(ctx context.Context) error
	// Registerer receives the receiver's request counter; nil registers none.
	Registerer prometheus.Registerer
	// Logger receives failed deliveries; default slog.Default().
	Logger *slog.Logger
}

// NewReceiver returns the HTTP feedback receiver, for stores in other
// languages:
//
//	POST /feedback   one event as JSON (Content-Type: application/json):
//	                 204 delivered; 400 invalid, naming the field; 401 bad or
//	                 missing token; 405 not POST; 413 body over MaxBody;
//	                 415 not JSON; 503 delivery failed (retry)
//	GET  /healthz    200 while the process serves
//	GET  /readyz     200 when Ready says so, else 503
//	GET  /metrics    Prometheus metrics of Gatherer
//
// Error bodies are JSON: {"error": "...", "field": "queue_size"}.
func NewReceiver(o ReceiverOptions) (http.Handler, error) {
	if o.Deliver == nil {
		return nil, errors.New("httpbus: receiver needs Deliver")
	}
	if err := opts.Positive("max_body", &o.MaxBody, 64<<10); err != nil {
		return nil, fmt.Errorf("httpbus: %w", err)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	requests, err := promutil.Register(o.Registerer, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "feedback_http_requests_total",
		Help: "Requests to POST /feedback, by status code.",
	}, []string{"code"}))
	if err != nil {
		return nil, err
	}
	r := &receiver{o: o, requests: requests}
	mux := http.NewServeMux()
	mux.HandleFunc("/feedback", r.feedback)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", r.ready)
	if o.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{}))
	}
	return mux, nil
}

type receiver struct {
	o        ReceiverOptions
	requests *prometheus.CounterVec
}

type errorBody struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"`
}

func (r *receiver) fail(w http.ResponseWriter, code int, msg, field string) {
	r.requests.WithLabelValues(strconv.Itoa(code)).Inc()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(errorBody{Error: msg, Field: field})
}

func (r *receiver) feedback(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		r.fail(w, http.StatusMethodNotAllowed, "use POST", "")
		return
	}
	if r.o.Token != "" {
		// The scheme is case-insensitive (RFC 9110); the token is not.
		scheme, got, _ := strings.Cut(strings.TrimSpace(req.Header.Get("Authorization")), " ")
		if !strings.EqualFold(scheme, "Bearer") ||
			subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(r.o.Token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="sluice"`)
			r.fail(w, http.StatusUnauthorized, "missing or wrong bearer token", "")
			return
		}
	}
	if mt, _, err := mime.ParseMediaType(req.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		r.fail(w, http.StatusUnsupportedMediaType, "Content-Type must be application/json", "")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, r.o.MaxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			r.fail(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body over %d bytes", r.o.MaxBody), "")
			return
		}
		r.fail(w, http.StatusBadRequest, "reading body: "+err.Error(), "")
		return
	}
	e, err := feedback.DecodeEvent(bytes.NewReader(body))
	if err != nil {
		var fe *feedback.FieldError
		field := ""
		if errors.As(err, &fe) {
			field = fe.Field
		}
		r.fail(w, http.StatusBadRequest, err.Error(), field)
		return
	}
	if err := r.o.Deliver(req.Context(), e); err != nil {
		var fe *feedback.FieldError
		if errors.As(err, &fe) {
			r.fail(w, http.StatusBadRequest, err.Error(), fe.Field)
			return
		}
		r.o.Logger.Warn("feedback delivery failed", "coordinator", e.CoordinatorID, "err", err)
		r.fail(w, http.StatusServiceUnavailable, "delivery failed: "+err.Error(), "")
		return
	}
	r.requests.WithLabelValues("204").Inc()
	w.WriteHeader(http.StatusNoContent)
}

func (r *receiver) ready(w http.ResponseWriter, req *http.Request) {
	if r.o.Ready != nil {
		ctx, cancel := context.WithTimeout(req.Context(), 2*time.Second)
		defer cancel()
		if err := r.o.Ready(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
	}
	_, _ = io.WriteString(w, "ready\n")
}

// ClientOptions configure a Client. Only URL is required: every other zero
// field takes the default its comment gives.
type ClientOptions struct {
	// URL of the receiver's POST /feedback, e.g. http://pipeline:8080/feedback. Required.
	URL string
	// Token is sent as a bearer token when set; default none.
	Token string
	// Timeout bounds each attempt; default 2s.
	Timeout time.Duration
	// Attempts is how many times Publish posts an event before it gives up,
	// retrying on network errors, 429 and 5xx; default 4. 1: no retry.
	Attempts int
	// Backoff before the first retry, doubled each time; default 100ms.
	Backoff time.Duration
	// HTTPClient is the HTTP client; default a new http.Client.
	HTTPClient *http.Client
}

// Client is a feedback.Publisher that posts events to a receiver. Safe for
// concurrent use.
type Client struct{ o ClientOptions }

// NewClient checks the options and returns a Client.
func NewClient(o ClientOptions) (*Client, error) {
	u, err := url.Parse(o.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("httpbus: url=%q: must be an absolute http(s) URL", o.URL)
	}
	if err := opts.Check(
		opts.Positive("timeout", &o.Timeout, 2*time.Second),
		opts.Positive("attempts", &o.Attempts, 4),
		opts.Positive("backoff", &o.Backoff, 100*time.Millisecond),
	); err != nil {
		return nil, fmt.Errorf("httpbus: %w", err)
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{}
	}
	return &Client{o: o}, nil
}

// StatusError is a receiver's refusal that retrying will not fix (4xx other than 429).
type StatusError struct {
	Code  int
	Body  string
	Field string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("httpbus: receiver answered %d: %s", e.Code, e.Body)
}

// Publish posts e, retrying with backoff on network errors, 429 and 5xx,
// within ctx. A 4xx other than 429 is returned at once as a *StatusError.
func (c *Client) Publish(ctx context.Context, e feedback.Event) error {
	if err := e.Validate(); err != nil {
		return err
	}
	body := e.Encode()
	backoff := c.o.Backoff
	var last error
	for attempt := 0; ; attempt++ {
		var retry bool
		retry, last = c.post(ctx, body)
		if last == nil || !retry || attempt+1 >= c.o.Attempts {
			return last
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last attempt: %v)", ctx.Err(), last)
		case <-time.After(backoff):
		}
		backoff *= 2
	}
}

func (c *Client) post(ctx context.Context, body []byte) (retry bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.o.URL, bytes.NewReader(body))
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", "application/json")
	if c.o.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.o.Token)
	}
	resp, err := c.o.HTTPClient.Do(req)
	if err != nil {
		return true, fmt.Errorf("httpbus: post to %s: %w", c.o.URL, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode/100 == 2 {
		return false, nil
	}
	var eb errorBody
	text := string(bytes.TrimSpace(msg))
	if json.Unmarshal(msg, &eb) == nil && eb.Error != "" {
		text = eb.Error
	}
	err = &StatusError{Code: resp.StatusCode, Body: text, Field: eb.Field}
	return resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500, err
}
