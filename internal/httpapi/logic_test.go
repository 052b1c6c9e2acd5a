package httpapi

import (
	"testing"

	"upsize/internal/cancel"
)

// Rule 3 on its own: what a request id used before decides.
func TestJudgeKnown(t *testing.T) {
	first := cancel.Request{ID: "r", ImageID: 7, Scale: "4x", State: cancel.Running}
	same := asked{imageID: 7, idOK: true, scale: "4x", scaleOK: true}
	for _, c := range []struct {
		name  string
		known cancel.Request
		ask   asked
		want  knownAnswer
	}{
		{"same image and scale attaches", first, same, knownAttach},
		{"a finished one too", func() cancel.Request { r := first; r.State = cancel.Completed; return r }(), same, knownAttach},
		{"canceled answers 409 whatever is asked", func() cancel.Request { r := first; r.State = cancel.Canceled; return r }(), asked{}, knownCanceled},
		{"a tombstone too", cancel.Request{ID: "r", State: cancel.Canceled, Tombstone: true}, same, knownCanceled},
		{"other scale", first, asked{imageID: 7, idOK: true, scale: "2x", scaleOK: true}, knownReused},
		{"other image", first, asked{imageID: 8, idOK: true, scale: "4x", scaleOK: true}, knownReused},
		{"unparsable id", first, asked{imageID: 0, idOK: false, scale: "4x", scaleOK: true}, knownReused},
		{"unparsable scale", first, asked{imageID: 7, idOK: true, scale: "", scaleOK: false}, knownReused},
	} {
		if got := judgeKnown(c.known, c.ask); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
}

// What the cancels_total metric says about each result of a cancel.
func TestCancelResult(t *testing.T) {
	for _, c := range []struct {
		res  cancel.CancelResult
		want string
	}{
		{cancel.CancelResult{State: cancel.Canceled, Was: ""}, "tombstone"},
		{cancel.CancelResult{State: cancel.Canceled, Was: cancel.Queued}, "queued"},
		{cancel.CancelResult{State: cancel.Canceled, Was: cancel.Running}, "running"},
		{cancel.CancelResult{State: cancel.Canceled, Was: cancel.Canceled}, "already_canceled"},
		{cancel.CancelResult{State: cancel.Completed, Was: cancel.Completed}, "completed"},
		{cancel.CancelResult{State: cancel.Failed, Was: cancel.Failed}, "failed"},
	} {
		if got := cancelResult(c.res); got != c.want {
			t.Errorf("%+v: %q, want %q", c.res, got, c.want)
		}
	}
}

func TestParseScale(t *testing.T) {
	for body, want := range map[string]string{
		"": "2x", "  ": "2x", "{}": "2x", `{"scaleSize":null}`: "2x", `{"scaleSize":"8x"}`: "8x",
		`{"scaleSize":"8x","other":1}`: "8x", `{"scaleSize":"16x"}`: "", `{"scaleSize":8}`: "",
		`{"scaleSize":"2x","scaleSize":"4x"}`: "", `["2x"]`: "", `{"scaleSize":"4x"} {}`: "", `null`: "",
	} {
		got, ok := parseScale([]byte(body))
		if got != want || ok != (want != "") {
			t.Errorf("parseScale(%q) = %q, %v; want %q", body, got, ok, want)
		}
	}
}
