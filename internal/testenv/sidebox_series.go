package testenv

import (
	"bufio"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Series returns the value of one series of /metrics: the metric name with the label
// label="value" (for example Series("sidebox_outbox_published_total", "table",
// "a.outbox")), summed over its other labels, and whether such a series was found.
func (s *Sidebox) Series(name, label, value string) (float64, bool) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + s.addr + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	want := label + "=" + strconv.Quote(value)
	var sum float64
	found := false
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		labels, ok := strings.CutPrefix(line, name+"{")
		if !ok {
			continue
		}
		end := strings.LastIndexByte(labels, '}')
		if end < 0 || !hasLabel(labels[:end], want) {
			continue
		}
		if v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64); err == nil {
			sum += v
			found = true
		}
	}
	return sum, found && sc.Err() == nil
}

// hasLabel reports whether the label list a="x",b="y" holds want (b="y").
func hasLabel(list, want string) bool {
	for list != "" {
		if strings.HasPrefix(list, want) && (len(list) == len(want) || list[len(want)] == ',') {
			return true
		}
		// Skip one label: name="value" where value may hold escaped quotes.
		i := strings.IndexByte(list, '"')
		if i < 0 {
			return false
		}
		j := i + 1
		for j < len(list) && list[j] != '"' {
			if list[j] == '\\' {
				j++
			}
			j++
		}
		list = strings.TrimPrefix(list[min(j+1, len(list)):], ",")
	}
	return false
}
