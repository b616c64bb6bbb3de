// Command report assembles one `make bench` run into bench/results/<date>.md with PNG
// plots, and copies it to bench/results/latest.md. The benchmarks of bench/ leave their
// reports in the directory named by SIDEBOX_BENCH_OUT (one JSON file per benchmark,
// with its Markdown and the series to plot, and machine.json); this command reads them.
// It is a module of its own so that gonum/plot stays out of sidebox's dependencies.
//
//	go run . -in DIR -out ../results [-date 2026-12-02] [-commit abc1234]
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// series and saved mirror bench/results_test.go and bench/report_test.go.
type series struct {
	Plot  string    `json:"plot"`
	Group string    `json:"group"`
	Label string    `json:"label"`
	X     []float64 `json:"x"`
	Y     []float64 `json:"y"`
}

type target struct {
	Figure string `json:"figure"`
	Value  string `json:"value"`
	Target string `json:"target"`
	Met    bool   `json:"met"`
}

type saved struct {
	Name     string     `json:"name"`
	At       int64      `json:"at"`
	Title    string     `json:"title"`
	Markdown string     `json:"markdown"`
	Head     []string   `json:"head"`
	Rows     [][]string `json:"rows"`
	Series   []series   `json:"series"`
	Targets  []target   `json:"targets"`
}

type machine struct {
	Cores      int    `json:"cores"`
	CPU        string `json:"cpu"`
	Memory     string `json:"memory"`
	Go         string `json:"go"`
	PostgreSQL string `json:"postgresql"`
	RabbitMQ   string `json:"rabbitmq"`
	Load       string `json:"load"`
}

func main() {
	in := flag.String("in", "", "directory the benchmarks wrote (SIDEBOX_BENCH_OUT)")
	out := flag.String("out", "../results", "results directory")
	date := flag.String("date", time.Now().UTC().Format("2006-01-02"), "date of the run, names the files")
	commit := flag.String("commit", "", "commit measured")
	note := flag.String("note", "", "a sentence about the run, shown under the machine")
	flag.Parse()
	if err := run(*in, *out, *date, *commit, *note); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
}

func run(in, out, date, commit, note string) error {
	var m machine
	if err := readJSON(filepath.Join(in, "machine.json"), &m); err != nil {
		return err
	}
	files, err := filepath.Glob(filepath.Join(in, "Benchmark*.json"))
	if err != nil {
		return err
	}
	var reports []saved
	for _, f := range files {
		var s saved
		if err := readJSON(f, &s); err != nil {
			return err
		}
		reports = append(reports, s)
	}
	if len(reports) == 0 {
		return fmt.Errorf("no benchmark reports in %s", in)
	}
	slices.SortFunc(reports, func(a, b saved) int { return int(a.At - b.At) })
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	pngs, err := drawAll(reports, out, date)
	if err != nil {
		return err
	}

	var b strings.Builder
	fmt.Fprintf(&b, "# sidebox benchmark results, %s\n\n", date)
	if commit != "" {
		fmt.Fprintf(&b, "Commit `%s`, measured by `make bench` (`bench/`; method in [bench/README.md](../README.md)).\n\n", commit)
	}
	fmt.Fprintf(&b, "| machine | |\n| --- | --- |\n| cores | %d (%s) |\n| memory | %s |\n| PostgreSQL | %s |\n| RabbitMQ | %s |\n| Go | %s |\n| 1-minute load average at the start | %s |\n\n",
		m.Cores, m.CPU, m.Memory, m.PostgreSQL, m.RabbitMQ, m.Go, m.Load)
	b.WriteString("PostgreSQL, RabbitMQ, the benchmark process and the relay share these cores. Every comparison below was measured in this run, interleaved; each table shows the load average at its start and end.\n\n")
	if load, err := strconv.ParseFloat(m.Load, 64); err == nil && load > float64(m.Cores) {
		fmt.Fprintf(&b, "**A loaded machine:** the load average was %s on %d cores when the run started: other work shared the machine, so compare the figures with each other within this run, not with other runs or the targets' absolute values.\n\n", m.Load, m.Cores)
	}
	if note != "" {
		b.WriteString(note + "\n\n")
	}
	var targets []target
	for _, r := range reports {
		targets = append(targets, r.Targets...)
	}
	if len(targets) > 0 {
		b.WriteString("## Targets (reported, not asserted)\n\n| figure | measured | target | met |\n| --- | --- | --- | --- |\n")
		for _, t := range targets {
			met := "no"
			if t.Met {
				met = "yes"
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", t.Figure, t.Value, t.Target, met)
		}
		b.WriteString("\n")
	}
	if len(pngs) > 0 {
		b.WriteString("## Plots\n\n")
		for _, p := range pngs {
			fmt.Fprintf(&b, "![%s](%s)\n\n", p.title, p.file)
		}
	}
	b.WriteString("## Tables\n")
	for _, r := range reports {
		b.WriteString(r.Markdown)
	}
	doc := []byte(b.String())
	if err := os.WriteFile(filepath.Join(out, date+".md"), doc, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(out, "latest.md"), doc, 0o644)
}

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

type png struct{ title, file string }

// drawAll draws every plot the reports have data for.
func drawAll(reports []saved, out, date string) ([]png, error) {
	byPlot := map[string][]series{}
	for _, r := range reports {
		for _, s := range r.Series {
			byPlot[s.Plot] = append(byPlot[s.Plot], s)
		}
	}
	var pngs []png
	save := func(p *plot.Plot, name, title string, w vg.Length) error {
		file := date + "-" + name + ".png"
		if err := p.Save(w, 4*vg.Inch, filepath.Join(out, file)); err != nil {
			return fmt.Errorf("plot %s: %w", name, err)
		}
		pngs = append(pngs, png{title: title, file: file})
		return nil
	}
	for _, g := range groups(byPlot["latency"]) {
		p, err := latencyCDF(g.name, g.series)
		if err != nil {
			return nil, err
		}
		if err := save(p, "latency-"+slug(g.name), "commit-to-delivery latency CDF, "+g.name, 7*vg.Inch); err != nil {
			return nil, err
		}
	}
	for _, g := range groups(byPlot["throughput"]) {
		p, err := bars("msgs/s, "+g.name+": best and median of the runs", g.series)
		if err != nil {
			return nil, err
		}
		if err := save(p, "throughput-"+slug(g.name), "throughput, "+g.name, 8*vg.Inch); err != nil {
			return nil, err
		}
	}
	if s := byPlot["backlog"]; len(s) > 0 {
		p, err := xy("drain rate by backlog size", "backlog rows", "msgs/s", s, true)
		if err != nil {
			return nil, err
		}
		if err := save(p, "backlog", "drain rate against backlog size", 7*vg.Inch); err != nil {
			return nil, err
		}
	}
	if s := byPlot["scale"]; len(s) > 0 {
		p, err := xy("drain rate by relays on one table (best of the runs)", "relays", "msgs/s", s, false)
		if err != nil {
			return nil, err
		}
		if err := save(p, "scale", "drain rate by relays on one table", 7*vg.Inch); err != nil {
			return nil, err
		}
	}
	// The wake-up benchmark's table: a bar per variant from its tx/s column.
	for _, r := range reports {
		if !strings.HasPrefix(r.Name, "BenchmarkWriterWakeup") {
			continue
		}
		col := slices.Index(r.Head, "tx/s")
		if col < 0 {
			continue
		}
		var ws []series
		for _, row := range r.Rows {
			v, err := strconv.ParseFloat(strings.ReplaceAll(row[col], ",", ""), 64)
			if err == nil {
				ws = append(ws, series{Label: row[0], Y: []float64{v}})
			}
		}
		if len(ws) == 0 {
			continue
		}
		p, err := bars("writer transactions/s by wake-up variant", ws)
		if err != nil {
			return nil, err
		}
		if err := save(p, "wakeup", "writer rate by wake-up variant", 8*vg.Inch); err != nil {
			return nil, err
		}
	}
	return pngs, nil
}

type group struct {
	name   string
	series []series
}

// groups splits series by Group, in first-seen order, merging series of the same label.
func groups(ss []series) []group {
	var out []group
	for _, s := range ss {
		i := slices.IndexFunc(out, func(g group) bool { return g.name == s.Group })
		if i < 0 {
			out = append(out, group{name: s.Group})
			i = len(out) - 1
		}
		j := slices.IndexFunc(out[i].series, func(t series) bool { return t.Label == s.Label })
		if j < 0 {
			out[i].series = append(out[i].series, s)
		} else {
			out[i].series[j].Y = append(out[i].series[j].Y, s.Y...)
		}
	}
	return out
}

var nonWord = regexp.MustCompile(`[^a-z0-9]+`)

func slug(s string) string {
	return strings.Trim(nonWord.ReplaceAllString(strings.ToLower(s), "-"), "-")
}

// latencyCDF draws the cumulative distribution of each series' latencies, on a
// logarithmic millisecond axis.
func latencyCDF(name string, ss []series) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "commit-to-delivery latency, " + name
	p.X.Label.Text = "latency, ms (log scale)"
	p.Y.Label.Text = "fraction of messages delivered"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Legend.Top = true
	p.Legend.Left = true
	for i, s := range ss {
		y := slices.Clone(s.Y)
		slices.Sort(y)
		n := len(y)
		step := max(1, n/1000)
		var pts plotter.XYs
		for k := 0; k < n; k += step {
			pts = append(pts, plotter.XY{X: math.Max(y[k], 0.01), Y: float64(k+1) / float64(n)})
		}
		pts = append(pts, plotter.XY{X: math.Max(y[n-1], 0.01), Y: 1})
		l, err := plotter.NewLine(pts)
		if err != nil {
			return nil, err
		}
		l.Color = plotutil.Color(i)
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(s.Label, l)
	}
	p.Add(plotter.NewGrid())
	return p, nil
}

// bars draws, per label, a bar for the best (highest) value and one for the median.
func bars(title string, ss []series) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = "per second"
	bestV, medV := make(plotter.Values, len(ss)), make(plotter.Values, len(ss))
	names := make([]string, len(ss))
	multi := false
	for i, s := range ss {
		bestV[i] = slices.Max(s.Y)
		medV[i] = median(s.Y)
		names[i] = wrap(s.Label, 22)
		multi = multi || len(s.Y) > 1
	}
	w := vg.Points(22)
	b1, err := plotter.NewBarChart(bestV, w)
	if err != nil {
		return nil, err
	}
	b1.Color = plotutil.Color(0)
	b1.LineStyle.Width = 0
	p.Add(b1)
	if multi {
		b1.Offset = -w / 2
		b2, err := plotter.NewBarChart(medV, w)
		if err != nil {
			return nil, err
		}
		b2.Color = plotutil.Color(1)
		b2.LineStyle.Width = 0
		b2.Offset = w / 2
		p.Add(b2)
		p.Legend.Add("best", b1)
		p.Legend.Add("median", b2)
		p.Legend.Top = true
	}
	p.NominalX(names...)
	p.Add(plotter.NewGrid())
	return p, nil
}

// xy draws Y (the best of each point's runs) against X, one line per label.
func xy(title, xl, yl string, ss []series, logX bool) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = xl
	p.Y.Label.Text = yl
	if logX {
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	}
	byLabel := map[string]map[float64]float64{}
	var labels []string
	for _, s := range ss {
		if byLabel[s.Label] == nil {
			byLabel[s.Label] = map[float64]float64{}
			labels = append(labels, s.Label)
		}
		if len(s.X) == len(s.Y) {
			for i, x := range s.X {
				byLabel[s.Label][x] = math.Max(byLabel[s.Label][x], s.Y[i])
			}
		} else if len(s.X) == 1 { // several runs at one X
			byLabel[s.Label][s.X[0]] = math.Max(byLabel[s.Label][s.X[0]], slices.Max(s.Y))
		}
	}
	p.Y.Min = 0
	for i, l := range labels {
		var pts plotter.XYs
		for x, y := range byLabel[l] {
			pts = append(pts, plotter.XY{X: x, Y: y})
		}
		slices.SortFunc(pts, func(a, b plotter.XY) int { return int(a.X - b.X) })
		line, points, err := plotter.NewLinePoints(pts)
		if err != nil {
			return nil, err
		}
		line.Color, points.Color = plotutil.Color(i), plotutil.Color(i)
		p.Add(line, points)
		p.Legend.Add(l, line, points)
	}
	p.Legend.Top = false
	p.Add(plotter.NewGrid())
	return p, nil
}

func median(vs []float64) float64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// wrap breaks a label into lines of about width characters.
func wrap(s string, width int) string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(s) {
		if line != "" && len(line)+1+len(w) > width {
			lines = append(lines, line)
			line = w
			continue
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	return strings.Join(append(lines, line), "\n")
}
