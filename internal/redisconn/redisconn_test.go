package redisconn

import (
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

func TestOpenUnderstandsTheSchemes(t *testing.T) {
	c, err := Open("redis://:pw@127.0.0.1:6379/3", 7)
	if err != nil {
		t.Fatal(err)
	}
	o := c.(*redis.Client).Options()
	if o.Addr != "127.0.0.1:6379" || o.DB != 3 || o.Password != "pw" || o.PoolSize != 7 {
		t.Fatalf("redis:// options %+v", o)
	}
	c.Close()
	if c, err = Open("rediss://cache.example:6380/0", 0); err != nil || c.(*redis.Client).Options().TLSConfig == nil {
		t.Fatalf("rediss:// without TLS: %v", err)
	}
	c.Close()
	fo, err := parseSentinel("redis-sentinel://:secret@s1:26379,s2:26379/2?master=mymaster")
	if err != nil || fo.MasterName != "mymaster" || len(fo.SentinelAddrs) != 2 || fo.DB != 2 || fo.Password != "secret" {
		t.Fatalf("sentinel options %+v, %v", fo, err)
	}
	for _, bad := range []string{"redis-sentinel://s1:26379", "redis-sentinel://s1:26379/x?master=m", "http://x"} {
		if _, err := Open(bad, 0); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestRedactHidesThePassword(t *testing.T) {
	if r := Redact("redis://:hunter2@h:6379/0"); strings.Contains(r, "hunter2") {
		t.Fatalf("Redact left the password: %s", r)
	}
}
