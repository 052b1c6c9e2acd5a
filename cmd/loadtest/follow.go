package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// follow polls GET /api/requests/{id} of a request answered 202 until its state is final,
// -follow-timeout passes or the run stops.
func (r *runner) follow(p *plan) (outcome, string) {
	ctx, cancel := context.WithTimeout(r.ctx, r.cfg.FollowTimeout)
	defer cancel()
	url := r.cfg.Base.String() + "/api/requests/" + p.RequestID
	hdr := http.Header{"X-Api-Key": {p.Account.Key}}
	tick := time.NewTicker(r.cfg.PollInterval)
	defer tick.Stop()
	last := "no answer"
	for {
		select {
		case <-ctx.Done():
			if r.ctx.Err() != nil {
				return interrupted, "while following a 202: " + last
			}
			return acceptedUnresolved, "after -follow-timeout: " + last
		case <-tick.C:
		}
		code, body, err := send(ctx, r.api, http.MethodGet, url, hdr, nil)
		o, why, final := followed(code, body, err)
		if final {
			return o, why
		}
		last = why
	}
}

// followed reads one answer of GET /api/requests/{id}; final says whether the request's fate is known.
func followed(code int, body []byte, err error) (o outcome, why string, final bool) {
	switch {
	case err != nil:
		return "", err.Error(), false
	case code == http.StatusTooManyRequests || code >= 500:
		return "", fmt.Sprintf("%d %s", code, reason(body)), false // busy: ask again
	case code != http.StatusOK:
		// the service lost track of a request it accepted (404 no_request): no state will come
		return acceptedUnresolved, fmt.Sprintf("%d %s", code, reason(body)), true
	}
	var st struct {
		State string `json:"state"`
		Error struct {
			Code int    `json:"code"`
			Data string `json:"data"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return "", "unreadable state", false
	}
	switch st.State {
	case "completed":
		return acceptedCompleted, "", true
	case "canceled":
		return acceptedCanceled, "", true
	case "failed":
		return acceptedFailed, fmt.Sprintf("%d %s", st.Error.Code, st.Error.Data), true
	}
	return "", st.State, false
}
