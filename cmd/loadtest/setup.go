package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"io"
	"math/rand/v2"
	"mime/multipart"
	"net/http"
	"strconv"
)

// account is a test user with its API key and the source images it uploaded.
type account struct {
	Plan string
	ID   int64
	Key  string
	// Sources by size name ("512x512"): one PNG and one JPEG each.
	Sources map[string][]source
}

// source is an uploaded image the run upsizes.
type source struct {
	ID     int64
	Size   string
	Format string
}

// fleet is the run's users; Free is nil when no request is sent as a free user.
type fleet struct {
	Paid, Free *account
}

var formats = []string{"png", "jpeg"}

// setup makes the run's own data through the admin API, so a run never touches anyone else's.
func setup(ctx context.Context, cfg *config, hc *http.Client, log io.Writer) (fleet, error) {
	var fl fleet
	if cfg.Configure {
		if err := configure(ctx, cfg, hc); err != nil {
			return fl, err
		}
	}
	files, err := sourceFiles(cfg.Sizes)
	if err != nil {
		return fl, err
	}
	if fl.Paid, err = newAccount(ctx, cfg, hc, "paid", files); err != nil {
		return fl, err
	}
	if cfg.FreeShare > 0 {
		if fl.Free, err = newAccount(ctx, cfg, hc, "free", files); err != nil {
			return fl, err
		}
	}
	fmt.Fprintf(log, "setup: paid user %d", fl.Paid.ID)
	if fl.Free != nil {
		fmt.Fprintf(log, ", free user %d", fl.Free.ID)
	}
	fmt.Fprintf(log, ", %d source images each\n", len(files))
	return fl, nil
}

func configure(ctx context.Context, cfg *config, hc *http.Client) error {
	if err := adminCall(ctx, cfg, hc, http.MethodPut, "/admin/models/upsize", map[string]string{"model": cfg.Model}, nil); err != nil {
		return err
	}
	return adminCall(ctx, cfg, hc, http.MethodPut, "/admin/credit-costs/upsize", cfg.Costs, nil)
}

func newAccount(ctx context.Context, cfg *config, hc *http.Client, plan string, files []sourceFile) (*account, error) {
	var u struct {
		User struct {
			ID int64 `json:"id"`
		} `json:"user"`
	}
	body := map[string]any{"plan": plan, "credits": cfg.Credits, "billing": "ok"}
	if err := adminCall(ctx, cfg, hc, http.MethodPost, "/admin/users", body, &u); err != nil {
		return nil, err
	}
	var k struct {
		APIKey string `json:"apiKey"`
	}
	path := "/admin/users/" + strconv.FormatInt(u.User.ID, 10) + "/api-keys"
	if err := adminCall(ctx, cfg, hc, http.MethodPost, path, map[string]any{}, &k); err != nil {
		return nil, err
	}
	a := &account{Plan: plan, ID: u.User.ID, Key: k.APIKey, Sources: map[string][]source{}}
	for _, f := range files {
		id, err := upload(ctx, cfg, hc, a.Key, f)
		if err != nil {
			return nil, err
		}
		a.Sources[f.Size] = append(a.Sources[f.Size], source{ID: id, Size: f.Size, Format: f.Format})
	}
	return a, nil
}

// adminCall sends a JSON body to the admin API and decodes its 2xx answer into out (if not nil).
func adminCall(ctx context.Context, cfg *config, hc *http.Client, method, path string, body, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	hdr := http.Header{"Authorization": {"Bearer " + cfg.AdminToken}, "Content-Type": {"application/json"}}
	code, answer, err := send(ctx, hc, method, cfg.Base.String()+path, hdr, bytes.NewReader(b))
	return expect(method+" "+path, code, answer, err, out)
}

// upload is the public POST /api/images, as the account's own user.
func upload(ctx context.Context, cfg *config, hc *http.Client, key string, f sourceFile) (int64, error) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	fw, err := mw.CreateFormFile("file", f.Size+"."+f.Format)
	if err == nil {
		_, err = fw.Write(f.Bytes)
	}
	if err == nil {
		err = mw.WriteField("originalPrompt", "loadtest")
	}
	if err == nil {
		err = mw.Close()
	}
	if err != nil {
		return 0, err
	}
	hdr := http.Header{"X-Api-Key": {key}, "Content-Type": {mw.FormDataContentType()}}
	var out struct {
		Image struct {
			ImageID int64 `json:"imageId"`
		} `json:"image"`
	}
	code, answer, err := send(ctx, hc, http.MethodPost, cfg.Base.String()+"/api/images", hdr, &buf)
	err = expect("upload "+f.Size+"."+f.Format, code, answer, err, &out)
	return out.Image.ImageID, err
}

// send makes one request and reads its whole (small) answer.
func send(ctx context.Context, hc *http.Client, method, url string, hdr http.Header, body io.Reader) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return 0, nil, err
	}
	req.Header = hdr
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b, err
}

// expect turns send's answer into an error unless it is a 2xx, and decodes it into out (if not nil).
func expect(what string, code int, body []byte, err error, out any) error {
	switch {
	case err != nil:
		return fmt.Errorf("%s: %w", what, err)
	case code < 200 || code > 299:
		return fmt.Errorf("%s: HTTP %d %s", what, code, reason(body))
	case out == nil:
		return nil
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("%s: answer %.200q: %w", what, body, err)
	}
	return nil
}

// reason is the "data" of SPEC's error envelope, or the start of a body that is not one.
func reason(body []byte) string {
	var env struct {
		Data any `json:"data"`
	}
	if json.Unmarshal(body, &env) == nil {
		if s, ok := env.Data.(string); ok {
			return s
		}
	}
	if len(body) > 100 {
		body = body[:100]
	}
	return string(body)
}

// sourceFile is an encoded test image.
type sourceFile struct {
	Size, Format string
	Bytes        []byte
}

// sourceFiles draws one PNG and one JPEG of every size of the mix.
func sourceFiles(sizes mix) ([]sourceFile, error) {
	var files []sourceFile
	for i, c := range sizes {
		w, h, _ := dimensions(c.Name) // parseConfig checked them
		img := drawSource(w, h, uint64(i))
		for _, f := range formats {
			b, err := encode(img, f)
			if err != nil {
				return nil, err
			}
			files = append(files, sourceFile{Size: c.Name, Format: f, Bytes: b})
		}
	}
	return files, nil
}

// drawSource is a colour gradient with noise: smooth areas and fine detail, so encoders and
// resamplers do the work a photo asks of them (a flat image would cost next to nothing).
func drawSource(w, h int, seed uint64) *image.RGBA {
	r := rand.New(rand.NewPCG(seed, 0x10ad))
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			n := r.IntN(48) - 24
			img.SetRGBA(x, y, color.RGBA{
				R: clamp(x*255/w + n),
				G: clamp(y*255/h + n),
				B: clamp((x+y)*255/(w+h) - n),
				A: 255,
			})
		}
	}
	return img
}

func clamp(v int) uint8 { return uint8(min(max(v, 0), 255)) }

// drawNoise is independent uniform noise in every channel of every pixel: the dearest image to encode
// after an upsize (a "noise PNG").
func drawNoise(w, h int, seed uint64) *image.RGBA {
	r := rand.New(rand.NewPCG(seed, 0x0153))
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for i := 0; i < len(img.Pix); i += 4 {
		v := r.Uint32()
		img.Pix[i], img.Pix[i+1], img.Pix[i+2], img.Pix[i+3] = uint8(v), uint8(v>>8), uint8(v>>16), 255
	}
	return img
}

// specFile draws and encodes the source image of a scenario's upsize.
func specFile(j jobSpec) (sourceFile, error) {
	var img *image.RGBA
	if j.Pattern == patternNoise {
		img = drawNoise(j.W, j.H, 0)
	} else {
		img = drawSource(j.W, j.H, 0)
	}
	b, err := encode(img, j.Format)
	return sourceFile{Size: j.size(), Format: j.Format, Bytes: b}, err
}

// source is the account's uploaded image of a scenario's upsize.
func (a *account) source(j jobSpec) (source, error) {
	for _, s := range a.Sources[j.size()] {
		if s.Format == j.Format {
			return s, nil
		}
	}
	return source{}, fmt.Errorf("user %d has no %s %s source", a.ID, j.size(), j.Format)
}

func encode(img image.Image, format string) ([]byte, error) {
	var buf bytes.Buffer
	var err error
	if format == "png" {
		err = png.Encode(&buf, img)
	} else {
		err = jpeg.Encode(&buf, img, &jpeg.Options{Quality: 90})
	}
	return buf.Bytes(), err
}
