package httpapi

import (
	"fmt"

	"github.com/gin-gonic/gin"

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

// imageDTO is the seed's EditImageDto.
type imageDTO struct {
	ImageID    int64       `json:"imageId"`
	Resolution string      `json:"resolution"`
	ScaleSize  string      `json:"scaleSize"`
	OwnerID    int64       `json:"ownerId"`
	EditInfo   editInfoDTO `json:"EditInfo"`
}

// editInfoDTO is the seed's PickTypeClass: all six fields, always present.
type editInfoDTO struct {
	OriginalPrompt string `json:"originalPrompt"`
	Super          string `json:"super"`
	Main           string `json:"main"`
	VariationID    int64  `json:"variationId"`
	GroupID        string `json:"groupId"`
	BlurReason     string `json:"blurReason"`
}

func toDTO(im store.Image) imageDTO {
	return imageDTO{
		ImageID:    im.ID,
		Resolution: fmt.Sprintf("%dx%d", im.Width, im.Height),
		ScaleSize:  im.Scale,
		OwnerID:    im.OwnerID,
		EditInfo: editInfoDTO{
			OriginalPrompt: im.OriginalPrompt, Super: im.Super, Main: im.Main,
			VariationID: im.VariationID, GroupID: im.GroupID, BlurReason: im.BlurReason,
		},
	}
}

func imageBody(im store.Image) gin.H { return gin.H{"image": toDTO(im)} }
