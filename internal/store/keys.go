package store

import "strconv"

// Keys names every Redis key the service owns. All share one prefix so that an operator can tell them
// from asynq's ("asynq:{queue}:...").
//
// Every key, and which package writes which of its fields (readers are many; writers are these only):
//
//	key                  type     written by
//	user:{id}            hash     store: plan, premium, billing, credits, webhook_secret (admin); cancel's scripts: credits
//	                              (reserve, refund), nothing else
//	apikey:{sha256}      hash     store: user, expires
//	image:{id}           hash     store: every field of an upload (PutImage); cancel's `complete` script:
//	                              every field of a result (store.Image.Fields, so one schema)
//	settings             hash     store: model, cost:2x, cost:4x, cost:8x
//	seq:user, seq:image  counter  store; cancel's `admit` takes a result's image id from seq:image
//	req:{user}:{rid}     hash     cancel only (internal/cancel/scripts.go lists the fields)
//	open:{user}          hash     cancel only: request id → "cost|work|queue" of each queued or running request
//	work, work:done      hash, counter  cancel only: each queue's estimated work, work completed
//	callbacks            zset     cancel's scripts add a request whose callback is due; package callback
//	                              removes it once its delivery task is enqueued
//	tombs:{user}         zset     cancel only: the user's tombstones, to bound them
//	unenqueued           zset     cancel (admit adds, Enqueued removes); read by jobs' sweeper
//	events, cancels      pub/sub  cancel's scripts publish; cancel.Hub and cancel.Inflight listen
//	janitor:lock         string   janitor: one run at a time across workers
//	janitor:orphans-swept string  janitor: when the last full walk of the blob store ended
type Keys struct{ Prefix string }

// DefaultKeys is the production layout.
var DefaultKeys = Keys{Prefix: "upsize:"}

func (k Keys) User(id int64) string      { return k.Prefix + "user:" + strconv.FormatInt(id, 10) }
func (k Keys) Image(id int64) string     { return k.Prefix + "image:" + strconv.FormatInt(id, 10) }
func (k Keys) APIKey(hash string) string { return k.Prefix + "apikey:" + hash }
func (k Keys) Settings() string          { return k.Prefix + "settings" }
func (k Keys) UserSeq() string           { return k.Prefix + "seq:user" }
func (k Keys) ImageSeq() string          { return k.Prefix + "seq:image" }

// Request is the state of one upsize request id of one user: request ids are scoped to their user.
func (k Keys) Request(userID int64, requestID string) string {
	return k.Prefix + "req:" + strconv.FormatInt(userID, 10) + ":" + requestID
}

// Unenqueued is a sorted set of admitted requests whose task is not known to be enqueued yet (score:
// admission time). An API that dies between admission and enqueue leaves its request here, and a sweeper
// enqueues it.
func (k Keys) Unenqueued() string { return k.Prefix + "unenqueued" }

// Events is the pub/sub channel on which every outcome is announced to the waiting API processes.
func (k Keys) Events() string { return k.Prefix + "events" }

// Cancels is the pub/sub channel on which cancels of queued or running work reach the workers.
func (k Keys) Cancels() string { return k.Prefix + "cancels" }

// BlobKey is where the bytes of an image live in the blob store.
func BlobKey(imageID int64) string { return "img-" + strconv.FormatInt(imageID, 10) }

// Open is a hash of the user's queued or running requests (request id → reserved cost).
func (k Keys) Open(userID int64) string { return k.Prefix + "open:" + strconv.FormatInt(userID, 10) }

// Tombstones is a sorted set of the user's cancel tombstones (request id → time), to bound them.
func (k Keys) Tombstones(userID int64) string {
	return k.Prefix + "tombs:" + strconv.FormatInt(userID, 10)
}

// Work is a hash of each queue's estimated work (ms) of its queued and running requests.
func (k Keys) Work() string { return k.Prefix + "work" }

// WorkDone counts the estimated work (ms) of the requests completed: its rate is the drain rate in work.
func (k Keys) WorkDone() string { return k.Prefix + "work:done" }

// Callbacks is a sorted set of the requests whose completion callback is due ("user:rid" → time).
func (k Keys) Callbacks() string { return k.Prefix + "callbacks" }
