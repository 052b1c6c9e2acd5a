package metrics

import "strconv"

// Label values that a client can influence come from fixed sets: anything else is "other". A label
// takes one series per value for good, so a client that invents methods, paths or reasons must not be
// able to add series (30,000 made-up methods once grew /metrics to 66 MB).

var methods = map[string]bool{"GET": true, "HEAD": true, "POST": true, "PUT": true, "PATCH": true, "DELETE": true, "OPTIONS": true}

// Method is the request method, or "other".
func Method(m string) string {
	if methods[m] {
		return m
	}
	return "other"
}

// StatusCode is the status as a label: the codes the service answers with are few, but a value outside
// the valid range is still folded.
func StatusCode(code int) string {
	if code < 100 || code > 599 {
		return "other"
	}
	return strconv.Itoa(code)
}
