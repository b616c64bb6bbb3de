package bench

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// report is the human-readable result of one benchmark: a Markdown table that make bench
// prints to standard output and that README.md quotes, plus notes on the method. (b.Log
// is not used: the testing package cuts a benchmark's log after ten lines.)
type report struct {
	title   string
	head    []string
	rows    [][]string
	notes   []string
	series  []series // figures for the plots of the results file (bench/report draws them)
	targets []target // figures for the results file's summary
}

// series is one line or bar group of a plot that bench/report draws from the results
// directory: plot "latency" (Y: every commit-to-delivery latency in ms, one CDF per
// Group, the rate), "throughput" (Y: the msgs/s of every run, a bar per Label in a
// chart per Group), "backlog" (X: backlog rows, Y: msgs/s), "scale" (X: relays, Y: the
// msgs/s of every run at that X).
type series struct {
	Plot  string    `json:"plot"`
	Group string    `json:"group,omitempty"`
	Label string    `json:"label"`
	X     []float64 `json:"x,omitempty"`
	Y     []float64 `json:"y"`
}

// plot adds a series to the report.
func (r *report) plot(s series) { r.series = append(r.series, s) }

func newReport(title string, head ...string) *report { return &report{title: title, head: head} }

func (r *report) row(cols ...string) { r.rows = append(r.rows, cols) }

// note adds a bullet point under the table.
func (r *report) note(format string, args ...any) {
	r.notes = append(r.notes, "- "+fmt.Sprintf(format, args...))
}

// detail adds an indented bullet point under the last note.
func (r *report) detail(format string, args ...any) {
	r.notes = append(r.notes, "  - "+fmt.Sprintf(format, args...))
}

func (r *report) String() string {
	width := make([]int, len(r.head))
	for _, row := range append([][]string{r.head}, r.rows...) {
		for i, c := range row {
			width[i] = max(width[i], len(c))
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n### %s\n\n", r.title)
	line := func(cols []string) {
		b.WriteString("|")
		for i, c := range cols {
			fmt.Fprintf(&b, " %-*s |", width[i], c)
		}
		b.WriteString("\n")
	}
	line(r.head)
	sep := make([]string, len(r.head))
	for i := range sep {
		sep[i] = strings.Repeat("-", width[i])
	}
	line(sep)
	for _, row := range r.rows {
		line(row)
	}
	if len(r.notes) > 0 {
		b.WriteString("\n")
	}
	for _, n := range r.notes {
		b.WriteString(n + "\n")
	}
	return b.String()
}

// rate formats a per-second figure with thousands separators.
func rate(v float64) string { return group(int64(math.Round(v))) }

func group(n int64) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return "-" + group(-n)
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func fmtMS(d time.Duration) string { return fmt.Sprintf("%.2f ms", ms(d)) }

// percentile returns the nearest-rank q-quantile (0 < q ≤ 1) of sorted durations.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func sortedCopy(ds []time.Duration) []time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s
}

// best returns the largest value.
func best(vs []float64) float64 { return slices.Max(vs) }

// median returns the median value (the mean of the middle two of an even count).
func median(vs []float64) float64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// spread is the range of vs relative to its median: (max - min) / median, as "±x%" of
// half of it.
func spread(vs []float64) string {
	m := median(vs)
	if m == 0 {
		return "-"
	}
	return fmt.Sprintf("±%.0f%%", 50*(slices.Max(vs)-slices.Min(vs))/m)
}

// bestMedian formats the best, median and spread of runs: "31,500 / 30,900 (±4%)".
func bestMedian(vs []float64) string {
	return fmt.Sprintf("%s / %s (%s)", rate(best(vs)), rate(median(vs)), spread(vs))
}

// durationsMS converts durations to milliseconds, for a plot.
func durationsMS(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = ms(d)
	}
	return out
}

func rates(vs []float64) string {
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = rate(v)
	}
	return strings.Join(parts, ", ")
}

// allRuns formats every run with their median and spread: "median 30,900 ±4%: 31,500, 30,900, 29,000".
func allRuns(vs []float64) string {
	return fmt.Sprintf("median %s %s: %s", rate(median(vs)), spread(vs), rates(vs))
}
