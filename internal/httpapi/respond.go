package httpapi

import (
	"github.com/gin-gonic/gin"

	"upsize/internal/dto"
	"upsize/internal/errcode"
	"upsize/internal/store"
)

// fail answers the error envelope {"success": false, "code": status, "data": reason} and stops the chain.
func fail(c *gin.Context, e *errcode.Error) { answerError(c, e.Code.Status, e.Data) }

// answerError is fail for an answer recorded earlier (a request's failure, replayed).
func answerError(c *gin.Context, status int, data string) {
	c.Set(ctxReason, data)
	dropUnreadBody(c)
	c.AbortWithStatusJSON(status, gin.H{"success": false, "code": status, "data": data})
}

// unavailable answers a failure of Redis or the blob store: the client may retry.
func unavailable(c *gin.Context, code errcode.Code, err error) {
	c.Set(ctxErr, err)
	c.Header("Retry-After", "1")
	fail(c, code.E())
}

func imageBody(im store.Image) dto.ImageBody { return dto.ImageBody{Image: dto.FromImage(im)} }
