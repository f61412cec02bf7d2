package limiter

import (
	"fmt"
	"strconv"
)

// reply reads the array a script returned. Scripts return numbers that may
// be fractional as strings (Redis truncates Lua numbers to integers).
type reply []any

func replyArray(res any, n int) (reply, error) {
	r, ok := res.([]any)
	if !ok || len(r) < n {
		return nil, fmt.Errorf("limiter: unexpected script reply %v (want an array of %d)", res, n)
	}
	return r, nil
}

func (r reply) str(i int) string {
	switch v := r[i].(type) {
	case string:
		return v
	case int64:
		return strconv.FormatInt(v, 10)
	}
	return ""
}

func (r reply) int(i int) int64 {
	switch v := r[i].(type) {
	case int64:
		return v
	case string:
		n, _ := strconv.ParseInt(v, 10, 64)
		return n
	}
	return 0
}

func (r reply) float(i int) float64 { return parseFloat(r.str(i)) }

// hash reads a flat field/value array (HGETALL inside a script).
func (r reply) hash(i int) map[string]string {
	flat, _ := r[i].([]any)
	h := make(map[string]string, len(flat)/2)
	for j := 0; j+1 < len(flat); j += 2 {
		h[reply(flat).str(j)] = reply(flat).str(j + 1)
	}
	return h
}
