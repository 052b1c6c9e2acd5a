package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"upsize/internal/blob"
	"upsize/internal/errcode"
	"upsize/internal/imageops"
	"upsize/internal/store"
)

// maxFieldBytes bounds each text field of an upload; maxParts bounds the parts of one upload;
// blobPutTimeout bounds storing an upload's bytes.
const (
	maxFieldBytes  = 8 << 10
	maxParts       = 32
	blobPutTimeout = time.Minute
)

// textFields are the text fields an upload may carry (the admin's ownerId and collection included);
// parts under other names are skipped unread.
var textFields = map[string]bool{
	"originalPrompt": true, "super": true, "main": true, "groupId": true, "blurReason": true, "variationId": true,
	"ownerId": true, "collection": true,
}

// upload is a parsed multipart upload. Its file lives in a pageBuffer that free releases.
type upload struct {
	file   *pageBuffer
	fields map[string]string
}

func (u upload) free() {
	if u.file != nil {
		u.file.Free()
	}
}

// Why an upload body could not be parsed; uploadFailed turns each into its answer.
var (
	errNotMultipart = errors.New("not a multipart/form-data body")
	errTooManyParts = fmt.Errorf("more than %d parts", maxParts)
)

// fieldError: a text field given twice, or too long.
type fieldError struct{ name string }

func (e fieldError) Error() string { return "bad field " + e.name }

// parseUpload reads a multipart/form-data body: the first part named "file" goes into a pageBuffer of
// fileMax bytes, the known text fields into fields (each at most maxFieldBytes, each once), and parts
// under other names are skipped unread. It is pure parsing: the caller bounds the body's size and time.
func parseUpload(body io.Reader, contentType string, fileMax int64) (up upload, err error) {
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "multipart/form-data" || params["boundary"] == "" {
		return upload{}, errNotMultipart
	}
	up.fields = map[string]string{}
	defer func() {
		if err != nil {
			up.free()
			up = upload{}
		}
	}()
	mr := multipart.NewReader(body, params["boundary"])
	for parts := 0; ; parts++ {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return up, nil
		}
		if err != nil {
			return up, err
		}
		if parts == maxParts {
			return up, errTooManyParts
		}
		name := p.FormName()
		switch {
		case name == "file" && up.file == nil:
			if up.file, err = newPageBuffer(fileMax); err != nil {
				return up, err
			}
			_, err = up.file.ReadFrom(p)
		case textFields[name]:
			if _, seen := up.fields[name]; seen {
				return up, fieldError{name} // said twice: which one would count?
			}
			var v []byte
			if v, err = io.ReadAll(io.LimitReader(p, maxFieldBytes+1)); err == nil && len(v) > maxFieldBytes {
				return up, fieldError{name}
			}
			up.fields[name] = string(v)
		default:
			_, err = io.Copy(io.Discard, p)
		}
		if err != nil {
			return up, err
		}
	}
}

// uploadFailed answers an upload body that parseUpload refused or could not read.
func uploadFailed(c *gin.Context, err error) {
	var fe fieldError
	switch {
	case errors.As(err, &fe):
		fail(c, errcode.InvalidField.With(fe.name))
	case errors.Is(err, errBufferFull):
		fail(c, errcode.PayloadTooLarge.E())
	case errors.Is(err, errTooManyParts):
		fail(c, errcode.InvalidBody.E())
	default:
		bodyReadFailed(c, err, errcode.MissingFile)
	}
}

// checkImage judges an upload by its bytes: format from the magic bytes, pixel count and structure from
// the header (before any decode: a decode bomb is refused here), then a full decode, bounded in time and
// in the memory that decodes may take at once, and stopped if the client goes away.
func checkImage(c *gin.Context, g *gate, b []byte, l Limits, log *slog.Logger) (imageops.Info, bool) {
	if _, err := imageops.Sniff(b); err != nil {
		fail(c, errcode.UnsupportedFormat.E())
		return imageops.Info{}, false
	}
	info, err := imageops.Probe(b)
	if err != nil {
		fail(c, errcode.InvalidImage.E())
		return imageops.Info{}, false
	}
	if info.Pixels() > l.MaxInputPixels {
		fail(c, errcode.ImageTooLarge.E())
		return imageops.Info{}, false
	}
	ctx := c.Request.Context()
	release, err := g.acquire(ctx, g.decodes, info.DecodeBytes, g.decodeMax)
	if err != nil {
		busy(c, err)
		return imageops.Info{}, false
	}
	defer release()
	vctx, cancel := context.WithTimeout(ctx, l.ValidateTimeout)
	defer cancel()
	err = imageops.Validate(vctx, b, log)
	switch {
	case err == nil:
		return info, true
	case ctx.Err() != nil:
		c.Abort() // the client went away: nobody reads an answer
	case vctx.Err() != nil:
		// Costs far more than its pixels justify (SPEC: invalid_image).
		fail(c, errcode.InvalidImage.E())
	default:
		fail(c, errcode.InvalidImage.E())
	}
	return imageops.Info{}, false
}

// busy answers a request that could not get its share of the API's memory in time.
func busy(c *gin.Context, err error) {
	if c.Request.Context().Err() != nil {
		c.Abort()
		return
	}
	c.Set(ctxErr, err)
	c.Header("Retry-After", "2")
	fail(c, errcode.ServerBusy.E())
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
			fail(c, errcode.InvalidField.With("variationId"))
			return e, false
		}
		e.VariationID = n
	}
	return e, true
}

// handleUpload is POST /api/images (owner: the caller) and POST /admin/images (owner: ownerId, and an
// optional collection).
func handleUpload(d *Deps, g *gate, admin bool) gin.HandlerFunc {
	return func(c *gin.Context) {
		ctx := c.Request.Context()
		// The body is held whole (libvips validates it from memory), so it is admitted against the
		// upload memory at its declared length, or at the largest allowed when it has none.
		size := c.Request.ContentLength
		if size > d.Limits.MaxUploadBytes {
			fail(c, errcode.PayloadTooLarge.E())
			return
		}
		if size < 0 {
			size = d.Limits.MaxUploadBytes
		}
		release, err := g.acquire(ctx, g.bodies, size, g.bodyMax)
		if err != nil {
			busy(c, err)
			return
		}
		defer release()
		body := http.MaxBytesReader(c.Writer, c.Request.Body, d.Limits.MaxUploadBytes)
		up, err := parseUpload(body, c.GetHeader("Content-Type"), size)
		if err != nil {
			uploadFailed(c, err)
			return
		}
		defer up.free()
		bodyRead(c)
		var owner int64
		collection := ""
		if admin {
			raw := up.fields["ownerId"]
			id, err := strconv.ParseInt(raw, 10, 64)
			if err != nil || id <= 0 {
				fail(c, errcode.InvalidField.With("ownerId"))
				return
			}
			if _, err := d.Store.GetUser(ctx, id); errors.Is(err, store.ErrNotFound) {
				fail(c, errcode.NoUser.With(raw))
				return
			} else if err != nil {
				unavailable(c, errcode.ServiceUnavailable, err)
				return
			}
			owner = id
			collection = strings.TrimSpace(up.fields["collection"])
			if len(collection) > 128 {
				fail(c, errcode.InvalidField.With("collection"))
				return
			}
		} else {
			owner = currentUser(c).ID
		}
		info, ok := editInfo(c, up.fields)
		if !ok {
			return
		}
		if up.file == nil {
			fail(c, errcode.MissingFile.E())
			return
		}
		file := up.file.Bytes()
		probe, ok := checkImage(c, g, file, d.Limits, d.Log.With("user_id", currentUserID(c)))
		if !ok {
			return
		}
		id, err := d.Store.NextImageID(ctx)
		if err != nil {
			unavailable(c, errcode.ServiceUnavailable, err)
			return
		}
		// A store that accepts connections but answers nothing must not hold the client for minutes.
		putCtx, cancelPut := context.WithTimeout(ctx, blobPutTimeout)
		defer cancelPut()
		stored, err := d.Blobs.Put(putCtx, store.BlobKey(id), func(w io.Writer) error {
			_, err := w.Write(file)
			return err
		})
		if err != nil {
			unavailable(c, errcode.ServiceUnavailable, err)
			return
		}
		im := store.Image{
			ID: id, OwnerID: owner, Width: probe.Width, Height: probe.Height, Scale: "1x",
			Format: string(probe.Format), Collection: collection, Size: stored.Size, SHA256: stored.SHA256,
			CreatedAt: time.Now(), EditInfo: info,
		}
		if err := d.Store.PutImage(ctx, im); err != nil {
			_ = d.Blobs.Delete(ctx, store.BlobKey(id))
			unavailable(c, errcode.ServiceUnavailable, err)
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
		fail(c, errcode.NoInputImage.With(raw))
		return store.Image{}, false
	}
	im, err := s.GetImage(c.Request.Context(), id)
	switch {
	case errors.Is(err, store.ErrNotFound), err == nil && !im.VisibleTo(currentUser(c).ID):
		fail(c, errcode.NoInputImage.With(raw))
		return store.Image{}, false
	case err != nil:
		unavailable(c, errcode.ServiceUnavailable, err)
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

// handleGetFile serves the bytes with their type and an ETag (conditional and range requests work). With
// redirect > 0 and an object store that signs URLs, it redirects to a presigned URL valid that long
// instead, so the bytes do not pass through the API (docs/deploy.md says when that is worth it).
func handleGetFile(s *store.Store, blobs blob.Store, redirect time.Duration) gin.HandlerFunc {
	signer, _ := blobs.(blob.Signer)
	return func(c *gin.Context) {
		im, ok := visibleImage(c, s)
		if !ok {
			return
		}
		if signer != nil && redirect > 0 {
			u, err := signer.SignedURLWith(c.Request.Context(), store.BlobKey(im.ID), redirect, blob.SignOptions{
				ContentType: imageops.Format(im.Format).ContentType(), CacheControl: "private, max-age=31536000, immutable",
			})
			if err != nil {
				unavailable(c, errcode.ServiceUnavailable, err)
				return
			}
			// The redirect itself may be cached by the client for a little less than the URL lives.
			c.Header("Cache-Control", fmt.Sprintf("private, max-age=%d", int(redirect.Seconds()*0.9)))
			c.Redirect(http.StatusTemporaryRedirect, u)
			return
		}
		obj, err := blobs.Open(c.Request.Context(), store.BlobKey(im.ID))
		if err != nil {
			unavailable(c, errcode.ServiceUnavailable, err)
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
