package evq

import "testing"

func TestOrder(t *testing.T) {
	var q Queue[string]
	q.Push(2, "c")
	q.Push(1, "a")
	q.Push(2, "d")
	q.Push(1, "b")
	q.Push(0.5, "first")
	var got []string
	for q.Len() > 0 {
		got = append(got, q.Pop())
	}
	want := []string{"first", "a", "b", "c", "d"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v (time order, then push order)", got, want)
		}
	}
}
