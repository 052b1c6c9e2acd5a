package httpapi

import (
	"context"
	_ "embed"
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/gin-gonic/gin"

	"upsize/internal/errcode"
)

//go:embed openapi.yaml
var openAPIYAML []byte

// OpenAPI returns the service's OpenAPI 3 document, loaded and validated once.
var OpenAPI = sync.OnceValues(func() (*openapi3.T, error) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(openAPIYAML)
	if err != nil {
		return nil, err
	}
	return doc, doc.Validate(context.Background())
})

func handleOpenAPI() gin.HandlerFunc {
	body := sync.OnceValues(func() ([]byte, error) {
		doc, err := OpenAPI()
		if err != nil {
			return nil, err
		}
		return json.Marshal(doc)
	})
	return func(c *gin.Context) {
		b, err := body()
		if err != nil {
			c.Set(ctxErr, err)
			fail(c, errcode.Internal.E())
			return
		}
		c.Data(http.StatusOK, "application/json", b)
	}
}

func handleHealthz() gin.HandlerFunc {
	return func(c *gin.Context) { c.JSON(http.StatusOK, gin.H{"status": "ok"}) }
}

// handleReadyz answers 503 while Redis is unreachable or the process drains.
func handleReadyz(ready func(ctx context.Context) error) gin.HandlerFunc {
	return func(c *gin.Context) {
		ctx, cancel := context.WithTimeout(c.Request.Context(), 2*time.Second)
		defer cancel()
		if err := ready(ctx); err != nil {
			c.JSON(http.StatusServiceUnavailable, gin.H{"status": "unavailable", "reason": err.Error()})
			return
		}
		c.JSON(http.StatusOK, gin.H{"status": "ok"})
	}
}
