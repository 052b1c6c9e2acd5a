// Package callback delivers completion callbacks: when an upsize request that carried X-Callback-Url
// ends (completed, failed, canceled), its final state (the body of GET /api/requests/{requestId}) is
// POSTed there, signed with the user's webhook secret, at least once, retried with backoff for more than
// an hour.
//
// The parts, each in a file of its own:
//
//   - allowlist.go: which URLs may be called (CALLBACK_ALLOWED_HOSTS). Pure; the API checks X-Callback-Url
//     with it at rule 2, and the worker checks again at every attempt (the configuration may have changed).
//   - dial.go: the HTTP client. Its dialer checks every address it connects to, after DNS, so that a name
//     cannot lead to loopback, private or link-local addresses (server-side request forgery, DNS rebinding);
//     no proxy, no redirects, bounded time and response size.
//   - sign.go: the X-Upsize-Signature header, and Verify for receivers.
//   - deliver.go: the asynq task of a delivery and its handler; dispatch.go: the loop that turns the
//     registry's due callbacks (written by the outcome scripts of package cancel) into tasks.
//
// Delivery never holds up upsize work: callback tasks have a queue of their own (Queue), served by an
// asynq server of their own with a few slots (Deliverer.NewServer), so a receiver that hangs or fails
// occupies callback slots only.
package callback
