package httpapi

import (
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"upsize/internal/blob"
	"upsize/internal/imageops"
	"upsize/internal/store"
)

// maxFieldBytes bounds each text field of an upload.
const maxFieldBytes = 8 << 10

// upload is a parsed multipart upload.
type upload struct {
	file    []byte
	hasFile bool
	fields  map[string]string
}

// readUpload parses the multipart body, bounded by MAX_UPLOAD_BYTES as a whole.
func readUpload(c *gin.Context, maxBytes int64) (upload, bool) {
	if c.Request.ContentLength > maxBytes {
		fail(c, http.StatusRequestEntityTooLarge, reasonPayloadTooLarge)
		return upload{}, false
	}
	c.Request.Body = http.MaxBytesReader(c.Writer, c.Request.Body, maxBytes)
	up := upload{fields: map[string]string{}}
	mt, params, err := mime.ParseMediaType(c.GetHeader("Content-Type"))
	if err != nil || mt != "multipart/form-data" || params["boundary"] == "" {
		fail(c, http.StatusBadRequest, reasonMissingFile)
		return upload{}, false
	}
	mr := multipart.NewReader(c.Request.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return upload{}, uploadReadFailed(c, err)
		}
		name := p.FormName()
		switch {
		case name == "file" && !up.hasFile:
			if up.file, err = io.ReadAll(p); err != nil {
				return upload{}, uploadReadFailed(c, err)
			}
			up.hasFile = true
		case name != "" && name != "file":
			v, err := io.ReadAll(io.LimitReader(p, maxFieldBytes+1))
			if err != nil {
				return upload{}, uploadReadFailed(c, err)
			}
			if len(v) > maxFieldBytes {
				fail(c, http.StatusBadRequest, reasonInvalidField(name))
				return upload{}, false
			}
			up.fields[name] = string(v)
		default:
			if _, err := io.Copy(io.Discard, p); err != nil {
				return upload{}, uploadReadFailed(c, err)
			}
		}
	}
	return up, true
}

func uploadReadFailed(c *gin.Context, err error) bool {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		fail(c, http.StatusRequestEntityTooLarge, reasonPayloadTooLarge)
	} else {
		fail(c, http.StatusBadRequest, reasonMissingFile)
	}
	return false
}

// checkImage judges an upload by its bytes: format from the magic bytes, pixel count from the header
// (before any decode), then a full decode.
func checkImage(c *gin.Context, b []byte, maxPixels int64) (imageops.Info, bool) {
	if _, err := imageops.Sniff(b); err != nil {
		fail(c, http.StatusUnsupportedMediaType, reasonUnsupportedFormat)
		return imageops.Info{}, false
	}
	info, err := imageops.Probe(b)
	if err != nil {
		fail(c, http.StatusUnprocessableEntity, reasonInvalidImage)
		return imageops.Info{}, false
	}
	if info.Pixels() > maxPixels {
		fail(c, http.StatusUnprocessableEntity, reasonImageTooLarge)
		return imageops.Info{}, false
	}
	if err := imageops.Validate(b); err != nil {
		fail(c, http.StatusUnprocessableEntity, reasonInvalidImage)
		return imageops.Info{}, false
	}
	return info, true
}

// editInfo reads the six optional text fields of an upload.
func editInfo(c *gin.Context, f map[string]string) (store.EditInfo, bool) {
	e := store.EditInfo{
		OriginalPrompt: f["originalPrompt"], Super: f["super"], Main: f["main"],
		GroupID: f["groupId"], BlurReason: f["blurReason"],
	}
	if v := strings.TrimSpace(f["variationId"]); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			fail(c, http.StatusBadRequest, reasonInvalidField("variationId"))
			return e, false
		}
		e.VariationID = n
	}
	return e, true
}

// handleUpload is POST /api/images (owner: the caller) and POST /admin/images (owner: ownerId, and an
// optional collection).
func handleUpload(d *Deps, admin bool) gin.HandlerFunc {
	return func(c *gin.Context) {
		ctx := c.Request.Context()
		up, ok := readUpload(c, d.Limits.MaxUploadBytes)
		if !ok {
			return
		}
		var owner int64
		collection := ""
		if admin {
			raw := up.fields["ownerId"]
			id, err := strconv.ParseInt(raw, 10, 64)
			if err != nil || id <= 0 {
				fail(c, http.StatusBadRequest, reasonInvalidField("ownerId"))
				return
			}
			if _, err := d.Store.GetUser(ctx, id); errors.Is(err, store.ErrNotFound) {
				fail(c, http.StatusNotFound, reasonNoUser(raw))
				return
			} else if err != nil {
				unavailable(c, reasonServiceUnavailable, err)
				return
			}
			owner = id
			collection = strings.TrimSpace(up.fields["collection"])
			if len(collection) > 128 {
				fail(c, http.StatusBadRequest, reasonInvalidField("collection"))
				return
			}
		} else {
			owner = currentUser(c).ID
		}
		info, ok := editInfo(c, up.fields)
		if !ok {
			return
		}
		if !up.hasFile {
			fail(c, http.StatusBadRequest, reasonMissingFile)
			return
		}
		probe, ok := checkImage(c, up.file, d.Limits.MaxInputPixels)
		if !ok {
			return
		}
		id, err := d.Store.NextImageID(ctx)
		if err != nil {
			unavailable(c, reasonServiceUnavailable, err)
			return
		}
		stored, err := d.Blobs.Put(ctx, store.BlobKey(id), func(w io.Writer) error {
			_, err := w.Write(up.file)
			return err
		})
		if err != nil {
			unavailable(c, reasonServiceUnavailable, err)
			return
		}
		im := store.Image{
			ID: id, OwnerID: owner, Width: probe.Width, Height: probe.Height, Scale: "1x",
			Format: string(probe.Format), Collection: collection, Size: stored.Size, SHA256: stored.SHA256,
			CreatedAt: time.Now(), EditInfo: info,
		}
		if err := d.Store.PutImage(ctx, im); err != nil {
			_ = d.Blobs.Delete(ctx, store.BlobKey(id))
			unavailable(c, reasonServiceUnavailable, err)
			return
		}
		c.JSON(http.StatusCreated, imageBody(im))
	}
}

// visibleImage loads the image of the :id path parameter if the caller may see it; otherwise it
// answers 404 no_input_image with the id as sent (missing, another user's, or not a number alike).
func visibleImage(c *gin.Context, s *store.Store) (store.Image, bool) {
	raw := c.Param("id")
	id, ok := parseID(raw)
	if !ok {
		fail(c, http.StatusNotFound, reasonNoInputImage(raw))
		return store.Image{}, false
	}
	im, err := s.GetImage(c.Request.Context(), id)
	switch {
	case errors.Is(err, store.ErrNotFound), err == nil && !im.VisibleTo(currentUser(c).ID):
		fail(c, http.StatusNotFound, reasonNoInputImage(raw))
		return store.Image{}, false
	case err != nil:
		unavailable(c, reasonServiceUnavailable, err)
		return store.Image{}, false
	}
	return im, true
}

// parseID reads a positive decimal id.
func parseID(s string) (int64, bool) {
	if s == "" || len(s) > 18 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil && n > 0
}

func handleGetImage(s *store.Store) gin.HandlerFunc {
	return func(c *gin.Context) {
		if im, ok := visibleImage(c, s); ok {
			c.JSON(http.StatusOK, imageBody(im))
		}
	}
}

// handleGetFile serves the bytes with their type and an ETag (conditional and range requests work).
func handleGetFile(s *store.Store, blobs blob.Store) gin.HandlerFunc {
	return func(c *gin.Context) {
		im, ok := visibleImage(c, s)
		if !ok {
			return
		}
		obj, err := blobs.Open(c.Request.Context(), store.BlobKey(im.ID))
		if err != nil {
			unavailable(c, reasonServiceUnavailable, err)
			return
		}
		defer obj.Close()
		h := c.Writer.Header()
		h.Set("Content-Type", imageops.Format(im.Format).ContentType())
		h.Set("ETag", `"`+im.SHA256+`"`)
		// Private: access depends on the API key. Immutable: an image's bytes never change.
		h.Set("Cache-Control", "private, max-age=31536000, immutable")
		http.ServeContent(c.Writer, c.Request, "", obj.ModTime(), obj)
	}
}
