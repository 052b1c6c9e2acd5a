package imageops

import (
	"context"
	"errors"
	"io"
	"testing"
)

// FuzzUploadBytes feeds arbitrary bytes through what an upload and a worker do with them. Whatever the
// bytes, nothing panics and every failure is one of the defined errors (a 4xx for the client, never a
// crashed worker). Seeds run in every `go test`; `go test -fuzz FuzzUploadBytes ./internal/imageops/`
// explores further.
func FuzzUploadBytes(f *testing.F) {
	Init(0)
	png := encPNG(f, noise(16, 12, 1))
	jpg := encJPEG(f, noise(16, 12, 2), 80)
	f.Add(png)
	f.Add(jpg)
	f.Add(corruptPNG())
	f.Add(png[:len(png)/2])
	f.Add(jpg[:40])
	f.Add([]byte("RIFF\x10\x00\x00\x00WEBPVP8 \x00\x00\x00\x00"))
	f.Add(pngHeader(1<<30, 1<<30))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		known := func(err error) bool {
			return err == nil || errors.Is(err, ErrUnsupportedFormat) || errors.Is(err, ErrInvalidImage) || errors.Is(err, ErrTooLarge)
		}
		info, err := Probe(b)
		if !known(err) {
			t.Fatalf("Probe: undefined error %v", err)
		}
		if err != nil || info.Pixels() > 1<<20 {
			return // the API refuses these before any decode
		}
		if err := Validate(b); !known(err) {
			t.Fatalf("Validate: undefined error %v", err)
		}
		_, err = Upsize(context.Background(), b, io.Discard, Params{Scale: 2, Kernel: "lanczos3", Encoding: DefaultEncoding, MaxOutputPixels: 1 << 22})
		if !known(err) {
			t.Fatalf("Upsize: undefined error %v", err)
		}
	})
}
