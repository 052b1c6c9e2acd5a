// Package redisconn opens the one Redis client a process shares between its store, the cancel registry
// and asynq, from a REDIS_URL.
package redisconn

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Open understands redis://, rediss:// (TLS) and
// redis-sentinel://[:password@]host1:port1[,host2:port2...][/db]?master=name.
// poolSize 0 keeps go-redis' default.
func Open(rawURL string, poolSize int) (redis.UniversalClient, error) {
	if strings.HasPrefix(rawURL, "redis-sentinel://") {
		fo, err := parseSentinel(rawURL)
		if err != nil {
			return nil, err
		}
		fo.PoolSize = poolSize
		return redis.NewFailoverClient(fo), nil
	}
	o, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("REDIS_URL: %w", err)
	}
	o.PoolSize = poolSize
	return redis.NewClient(o), nil
}

func parseSentinel(rawURL string) (*redis.FailoverOptions, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("REDIS_URL: %w", err)
	}
	fo := &redis.FailoverOptions{
		MasterName:    u.Query().Get("master"),
		SentinelAddrs: strings.Split(u.Host, ","),
	}
	if fo.MasterName == "" {
		return nil, fmt.Errorf("REDIS_URL: redis-sentinel:// needs ?master=<name>")
	}
	if pw, ok := u.User.Password(); ok {
		fo.Password = pw
		fo.SentinelPassword = pw
	}
	if db := strings.Trim(u.Path, "/"); db != "" {
		if fo.DB, err = strconv.Atoi(db); err != nil {
			return nil, fmt.Errorf("REDIS_URL: database %q is not a number", db)
		}
	}
	return fo, nil
}

// Redact hides the password of a Redis URL, for logs.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(unparsable REDIS_URL)"
	}
	return u.Redacted()
}
