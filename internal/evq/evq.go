// Package evq is the event queue of sluice's virtual-clock models
// (internal/lanesim, internal/shardsim). Events come out in time order, and
// events at the same time in the order they were pushed, so a model's run
// is the same every time.
package evq

import "container/heap"

// Queue holds events of type E, each at a time. The zero value is empty
// and ready to use.
type Queue[E any] struct {
	h   items[E]
	seq int
}

// Push adds e at time t.
func (q *Queue[E]) Push(t float64, e E) {
	q.seq++
	heap.Push(&q.h, item[E]{t: t, seq: q.seq, e: e})
}

// Pop removes and returns the earliest event, the first pushed among
// events of the same time. The queue must not be empty.
func (q *Queue[E]) Pop() E {
	return heap.Pop(&q.h).(item[E]).e
}

// Len is the number of events in the queue.
func (q *Queue[E]) Len() int { return len(q.h) }

type item[E any] struct {
	t   float64
	seq int
	e   E
}

type items[E any] []item[E]

func (h items[E]) Len() int { return len(h) }
func (h items[E]) Less(i, j int) bool {
	if h[i].t != h[j].t {
		return h[i].t < h[j].t
	}
	return h[i].seq < h[j].seq
}
func (h items[E]) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *items[E]) Push(x any)   { *h = append(*h, x.(item[E])) }
func (h *items[E]) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
