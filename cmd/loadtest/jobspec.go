package main

import (
	"fmt"
	"strings"
	"time"

	"upsize/internal/jobs"
	"upsize/internal/policy"
)

// jobSpec is one kind of upsize of a scenario: its source image (size, format, what is drawn on it) and
// its scale.
type jobSpec struct {
	W, H    int
	Format  string // png, jpeg
	Scale   string // 2x, 4x, 8x
	Pattern string // gradient (a colour gradient with some noise, as the mix's sources) or noise
}

const (
	patternGradient = "gradient"
	patternNoise    = "noise"
)

// parseJobSpec reads "<width>x<height>:<png|jpeg>:<scale>[:<gradient|noise>]", e.g. "1024x1024:png:8x:noise".
func parseJobSpec(s string) (jobSpec, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 && len(parts) != 4 {
		return jobSpec{}, fmt.Errorf("%q is not <width>x<height>:<png|jpeg>:<scale>[:gradient|noise]", s)
	}
	var j jobSpec
	var err error
	if j.W, j.H, err = dimensions(parts[0]); err != nil {
		return jobSpec{}, err
	}
	j.Format, j.Scale, j.Pattern = parts[1], parts[2], patternGradient
	if len(parts) == 4 {
		j.Pattern = parts[3]
	}
	switch {
	case j.Format != "png" && j.Format != "jpeg":
		return jobSpec{}, fmt.Errorf("%q: format %q is not png or jpeg", s, j.Format)
	case j.Pattern != patternGradient && j.Pattern != patternNoise:
		return jobSpec{}, fmt.Errorf("%q: pattern %q is not gradient or noise", s, j.Pattern)
	}
	if err := parseScale(j.Scale); err != nil {
		return jobSpec{}, fmt.Errorf("%q: %w", s, err)
	}
	return j, nil
}

func (j jobSpec) String() string {
	s := fmt.Sprintf("%s:%s:%s", j.size(), j.Format, j.Scale)
	if j.Pattern != patternGradient {
		s += ":" + j.Pattern
	}
	return s
}

func (j jobSpec) size() string { return fmt.Sprintf("%dx%d", j.W, j.H) }

// outPixels is the size of the result.
func (j jobSpec) outPixels() int64 {
	f, _ := policy.ScaleFactor(j.Scale) // parseScale checked it
	return int64(j.W) * int64(j.H) * int64(f*f)
}

// estimate is the work the service estimates for this upsize, with its own model: the result has the
// source's format.
func (j jobSpec) estimate() time.Duration {
	return policy.DefaultWork.Estimate(j.Format, j.outPixels())
}

// small says whether the service counts it a small task (jobs.QueuesFor).
func (j jobSpec) small() bool { return j.estimate() <= jobs.SmallWork }

// class is "small" or "large".
func (j jobSpec) class() string {
	if j.small() {
		return "small"
	}
	return "large"
}

// queues are the queues a paid user's upsize of this kind goes to: its first one, and for a large task
// the "more" one.
func (j jobSpec) queues() (first, more string) { return jobs.QueuesFor("paid", j.estimate()) }
