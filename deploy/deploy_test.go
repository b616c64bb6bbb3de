// Package deploy_test checks the deployment kit under deploy/: the Grafana
// dashboard and the Prometheus rules query only metrics the binary exports,
// the plain Kubernetes manifests decode strictly into their API types and
// inject the same sidecar as the chart and the webhook, and the compose file
// and the Dockerfile hold together with the code they build.
package deploy_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/sidebox/sidebox/internal/metrics"
)

// recorder is a Registerer that remembers the collectors registered with it.
type recorder struct {
	prometheus.Registerer
	collectors []prometheus.Collector
}

func (r *recorder) Register(c prometheus.Collector) error {
	if err := r.Registerer.Register(c); err != nil {
		return err
	}
	r.collectors = append(r.collectors, c)
	return nil
}

func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// fqName reads the metric name out of a Desc; Desc has no accessor for it.
var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// exported returns the names of the series the binary can export: every
// family metrics.New registers, with _bucket, _sum and _count for histograms
// and _sum and _count for summaries.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	rec := &recorder{Registerer: prometheus.NewRegistry()}
	metrics.New(rec)
	names := make(map[string]bool)
	for _, c := range rec.collectors {
		ch := make(chan *prometheus.Desc, 16)
		go func() { c.Describe(ch); close(ch) }()
		var suffixes []string
		switch c.(type) {
		case *prometheus.HistogramVec, prometheus.Histogram:
			// prometheus.Summary has the same method set as Histogram:
			// a lone Summary is counted as a histogram, which only adds _bucket.
			suffixes = []string{"_bucket", "_sum", "_count"}
		case *prometheus.SummaryVec:
			suffixes = []string{"_sum", "_count"}
		}
		for d := range ch {
			m := fqName.FindStringSubmatch(d.String())
			if m == nil {
				t.Fatalf("no name in %s", d)
			}
			names[m[1]] = true
			for _, s := range suffixes {
				names[m[1]+s] = true
			}
		}
	}
	if len(names) == 0 {
		t.Fatal("metrics.New registered nothing")
	}
	return names
}

// metricRef finds sidebox metric names in PromQL. Label values never start
// with sidebox_ in these files, so a plain scan is exact enough.
var metricRef = regexp.MustCompile(`\bsidebox_[a-zA-Z0-9_]*`)

func metricNames(exprs []string) []string {
	seen := make(map[string]bool)
	for _, e := range exprs {
		for _, m := range metricRef.FindAllString(e, -1) {
			seen[m] = true
		}
	}
	var out []string
	for m := range seen {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// checkBalanced catches the commonest PromQL typos: unbalanced brackets and quotes.
func checkBalanced(expr string) error {
	var stack []rune
	pairs := map[rune]rune{')': '(', ']': '[', '}': '{'}
	inQuote := false
	for _, r := range expr {
		switch {
		case r == '"':
			inQuote = !inQuote
		case inQuote:
		case r == '(' || r == '[' || r == '{':
			stack = append(stack, r)
		case pairs[r] != 0:
			if len(stack) == 0 || stack[len(stack)-1] != pairs[r] {
				return fmt.Errorf("unbalanced %q", r)
			}
			stack = stack[:len(stack)-1]
		}
	}
	if inQuote || len(stack) > 0 {
		return errors.New("unclosed bracket or quote")
	}
	return nil
}

// dashboard is the part of Grafana's dashboard model the test reads.
type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Definition string          `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	GridPos struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

func TestDashboardQueriesExportedMetrics(t *testing.T) {
	data, err := os.ReadFile("grafana/sidebox-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	if d.UID == "" || d.Title == "" {
		t.Error("dashboard lacks a uid or title")
	}

	var exprs []string
	ids := make(map[int]string)
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if other, dup := ids[p.ID]; dup {
				t.Errorf("panels %q and %q share id %d", other, p.Title, p.ID)
			}
			ids[p.ID] = p.Title
			if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
				t.Errorf("panel %q: gridPos %+v", p.Title, p.GridPos)
			}
			if p.Type != "row" {
				if len(p.Targets) == 0 {
					t.Errorf("panel %q has no query", p.Title)
				}
				if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
					t.Errorf("panel %q does not use the datasource variable", p.Title)
				}
			}
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("panel %q target %s: empty expr", p.Title, tg.RefID)
				}
				if err := checkBalanced(tg.Expr); err != nil {
					t.Errorf("panel %q: %v in %s", p.Title, err, tg.Expr)
				}
				exprs = append(exprs, tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		exprs = append(exprs, string(v.Query), v.Definition)
	}

	used := metricNames(exprs)
	have := exported(t)
	for _, m := range used {
		if !have[m] {
			t.Errorf("dashboard queries %s, which the binary does not export", m)
		}
	}
	// What the dashboard is for.
	for _, want := range []string{
		"sidebox_outbox_pending",                        // backlog
		"sidebox_outbox_oldest_pending_age_seconds",     // oldest pending age
		"sidebox_outbox_published_total",                // publish rate
		"sidebox_outbox_publish_latency_seconds_bucket", // commit-to-confirm latency
		"sidebox_outbox_dead",                           // dead messages
		"sidebox_inbox_dead",
		"sidebox_inbox_duplicates_total", // inbox duplicates
	} {
		if !slices.Contains(used, want) {
			t.Errorf("dashboard does not show %s", want)
		}
	}
}

// ruleFile is Prometheus' rule file format.
type ruleFile struct {
	Groups []struct {
		Name     string `json:"name"`
		Interval string `json:"interval,omitempty"`
		Rules    []struct {
			Alert       string            `json:"alert,omitempty"`
			Record      string            `json:"record,omitempty"`
			Expr        string            `json:"expr"`
			For         string            `json:"for,omitempty"`
			Labels      map[string]string `json:"labels,omitempty"`
			Annotations map[string]string `json:"annotations,omitempty"`
		} `json:"rules"`
	} `json:"groups"`
}

func TestAlertRulesQueryExportedMetrics(t *testing.T) {
	data, err := os.ReadFile("prometheus/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.UnmarshalStrict(data, &rf); err != nil {
		t.Fatalf("rule file: %v", err)
	}
	if len(rf.Groups) == 0 {
		t.Fatal("no rule groups")
	}
	alerts := make(map[string]string)
	var exprs []string
	for _, g := range rf.Groups {
		if g.Name == "" {
			t.Error("rule group without a name")
		}
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: a rule without an alert name", g.Name)
				continue
			}
			if _, dup := alerts[r.Alert]; dup {
				t.Errorf("alert %s defined twice", r.Alert)
			}
			alerts[r.Alert] = r.Expr
			if err := checkBalanced(r.Expr); err != nil {
				t.Errorf("alert %s: %v", r.Alert, err)
			}
			if r.For != "" {
				if _, err := model.ParseDuration(r.For); err != nil {
					t.Errorf("alert %s: for %q: %v", r.Alert, r.For, err)
				}
			}
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("alert %s: severity %q, want warning or critical", r.Alert, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s lacks a summary or description", r.Alert)
			}
			exprs = append(exprs, r.Expr)
		}
	}
	have := exported(t)
	for _, m := range metricNames(exprs) {
		if !have[m] {
			t.Errorf("alert rules query %s, which the binary does not export", m)
		}
	}
	// The alerts the kit promises: backlog age, dead messages, relay down.
	for alert, metric := range map[string]string{
		"SideboxOutboxBacklogAging": "sidebox_outbox_oldest_pending_age_seconds",
		"SideboxOutboxDeadMessages": "sidebox_outbox_dead",
		"SideboxInboxDeadMessages":  "sidebox_inbox_dead",
		"SideboxRelayDown":          "sidebox_build_info",
	} {
		if !strings.Contains(alerts[alert], metric) {
			t.Errorf("alert %s missing or not on %s", alert, metric)
		}
	}
}

// decodeManifests strictly decodes every document of a multi-document YAML
// file into its typed API object.
func decodeManifests(t *testing.T, path string) []any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var objs []any
	for i, doc := range bytes.Split(data, []byte("\n---\n")) {
		js, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			t.Fatalf("%s document %d: %v", path, i, err)
		}
		if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
			continue
		}
		var head struct{ APIVersion, Kind string }
		if err := json.Unmarshal(js, &head); err != nil {
			t.Fatal(err)
		}
		var obj any
		switch head.APIVersion + "/" + head.Kind {
		case "apps/v1/Deployment":
			obj = &appsv1.Deployment{}
		case "v1/Service":
			obj = &corev1.Service{}
		case "v1/Secret":
			obj = &corev1.Secret{}
		default:
			t.Fatalf("%s document %d: unexpected %s %s", path, i, head.APIVersion, head.Kind)
		}
		strict, err := kjson.UnmarshalStrict(js, obj)
		if err != nil || len(strict) > 0 {
			t.Fatalf("%s document %d (%s): %v %v", path, i, head.Kind, err, strict)
		}
		objs = append(objs, obj)
	}
	return objs
}

func TestKubernetesManifests(t *testing.T) {
	files, err := filepath.Glob("kubernetes/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	secrets := make(map[string]*corev1.Secret)
	var deployments []*appsv1.Deployment
	for _, f := range files {
		for _, o := range decodeManifests(t, f) {
			switch o := o.(type) {
			case *corev1.Secret:
				secrets[o.Name] = o
			case *appsv1.Deployment:
				deployments = append(deployments, o)
			}
		}
	}
	if len(deployments) == 0 {
		t.Fatal("no Deployment in deploy/kubernetes")
	}
	golden, err := os.ReadFile("../test/charts/testdata/sidecar-native.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range deployments {
		spec := d.Spec.Template.Spec
		var sidecar *corev1.Container
		for i := range spec.InitContainers {
			if spec.InitContainers[i].Name == "sidebox" {
				sidecar = &spec.InitContainers[i]
			}
		}
		if sidecar == nil {
			t.Errorf("%s: no native sidebox sidecar", d.Name)
			continue
		}
		if sidecar.RestartPolicy == nil || *sidecar.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			t.Errorf("%s: sidecar restartPolicy %v", d.Name, sidecar.RestartPolicy)
		}
		if d.Name == "orders" {
			// The same settings as the example chart's defaults: the same container.
			if got := canonicalJSON(t, sidecar); !bytes.Equal(got, golden) {
				t.Errorf("orders' sidecar differs from the chart's (test/charts/testdata/sidecar-native.json):\n%s", got)
			}
		}
		// Every Secret the pod reads is among the examples, with that key.
		for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
			for _, e := range c.Env {
				if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
					continue
				}
				ref := e.ValueFrom.SecretKeyRef
				s, ok := secrets[ref.Name]
				if !ok {
					t.Errorf("%s/%s: env %s reads Secret %s, which secrets.example.yaml lacks", d.Name, c.Name, e.Name, ref.Name)
				} else if _, ok := s.StringData[ref.Key]; !ok {
					t.Errorf("%s/%s: env %s reads key %s of Secret %s, which it lacks", d.Name, c.Name, e.Name, ref.Key, ref.Name)
				}
			}
		}
	}
}

func canonicalJSON(t *testing.T, v any) []byte {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var generic any
	if err := json.Unmarshal(raw, &generic); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(generic); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// knownVariables are the SIDEBOX_ variables of the contract and the design notes.
func knownVariables() map[string]bool {
	known := make(map[string]bool)
	for _, v := range strings.Fields(`DATABASE_URL AMQP_URL OUTBOX_TABLE INBOX_QUEUE INBOX_TABLE
		INBOX_CONSUMER HTTP_ADDR LOG_LEVEL LOG_FORMAT BATCH_SIZE POLL_INTERVAL MAX_ATTEMPTS
		RETRY_BACKOFF RETRY_BACKOFF_MAX PUBLISH_TIMEOUT RELAY_WORKERS INBOX_PREFETCH
		INBOX_BATCH_SIZE INBOX_BATCH_WAIT INBOX_RETENTION INBOX_DECLARE INBOX_BINDINGS
		SHUTDOWN_TIMEOUT STATUS_INTERVAL`) {
		known["SIDEBOX_"+v] = true
	}
	return known
}

type composeFile struct {
	Services map[string]struct {
		Image       string            `json:"image"`
		Build       *composeBuild     `json:"build"`
		Command     []string          `json:"command"`
		Environment map[string]string `json:"environment"`
		DependsOn   map[string]struct {
			Condition string `json:"condition"`
		} `json:"depends_on"`
	} `json:"services"`
	Configs map[string]struct {
		Content string `json:"content"`
	} `json:"configs"`
}

type composeBuild struct {
	Context    string            `json:"context"`
	Dockerfile string            `json:"dockerfile"`
	Target     string            `json:"target"`
	Args       map[string]string `json:"args"`
}

func TestCompose(t *testing.T) {
	data, err := os.ReadFile("compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cf composeFile
	// Not strict: compose has many more keys than the test reads.
	if err := yaml.Unmarshal(data, &cf); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	for _, want := range []string{"postgres", "rabbitmq", "migrate-orders", "migrate-shipping", "orders-sidebox", "shipping-sidebox", "orders", "shipping"} {
		if _, ok := cf.Services[want]; !ok {
			t.Errorf("service %s missing", want)
		}
	}
	known := knownVariables()
	for name, svc := range cf.Services {
		for dep := range svc.DependsOn {
			if _, ok := cf.Services[dep]; !ok {
				t.Errorf("%s depends on unknown service %s", name, dep)
			}
		}
		if b := svc.Build; b != nil {
			if b.Context != ".." || b.Dockerfile != "deploy/Dockerfile" {
				t.Errorf("%s: build from %s/%s, want ../deploy/Dockerfile", name, b.Context, b.Dockerfile)
			}
			if pkg := b.Args["PACKAGE"]; pkg != "" {
				if _, err := os.Stat(filepath.Join("..", pkg, "main.go")); err != nil {
					t.Errorf("%s builds %s: %v", name, pkg, err)
				}
			}
		}
		if !strings.HasPrefix(svc.Image, "ghcr.io/sidebox/sidebox:") {
			continue
		}
		if svc.Environment["SIDEBOX_DATABASE_URL"] == "" {
			t.Errorf("%s: no SIDEBOX_DATABASE_URL", name)
		}
		for v := range svc.Environment {
			if !known[v] {
				t.Errorf("%s: %s is not a sidebox variable", name, v)
			}
		}
		if len(svc.Command) == 0 || !slices.Contains([]string{"run", "relay", "inbox", "migrate"}, svc.Command[0]) {
			t.Errorf("%s: command %v", name, svc.Command)
		}
	}
	var defs map[string]any
	if err := json.Unmarshal([]byte(cf.Configs["rabbitmq-definitions"].Content), &defs); err != nil {
		t.Errorf("RabbitMQ definitions are not JSON: %v", err)
	}
}

func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(data)
	for _, want := range []string{
		"CGO_ENABLED=0",
		"-trimpath",
		`-s -w`,
		"FROM gcr.io/distroless/static-debian12:nonroot AS sidebox",
		"USER 65532:65532",
		"EXPOSE 9719",
		`ENTRYPOINT ["/sidebox"]`,
		`CMD ["run"]`,
	} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	// The sidecar is the default (last) target.
	stages := regexp.MustCompile(`(?m)^FROM .* AS (\S+)$`).FindAllStringSubmatch(df, -1)
	if len(stages) == 0 || stages[len(stages)-1][1] != "sidebox" {
		t.Errorf("last stage %v, want sidebox", stages)
	}
	// Every -X flag names a string variable that exists.
	targets := regexp.MustCompile(`-X (github\.com/sidebox/sidebox/[\w/]+)\.(\w+)=`).FindAllStringSubmatch(df, -1)
	if len(targets) == 0 {
		t.Fatal("no -X version flags")
	}
	for _, m := range targets {
		dir := filepath.Join("..", strings.TrimPrefix(m[1], "github.com/sidebox/sidebox/"))
		if !declaresStringVar(t, dir, m[2]) {
			t.Errorf("-X %s.%s: no package-level string variable %s in %s", m[1], m[2], m[2], dir)
		}
	}
}

// declaresStringVar reports whether the non-test Go files in dir declare a
// package-level variable name of type string (what -X can set).
func declaresStringVar(t *testing.T, dir, name string) bool {
	t.Helper()
	fset := token.NewFileSet()
	matches, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range matches {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.VAR {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for _, n := range vs.Names {
					if n.Name != name {
						continue
					}
					if id, ok := vs.Type.(*ast.Ident); ok && id.Name == "string" {
						return true
					}
					if vs.Type == nil && len(vs.Values) > 0 {
						if lit, ok := vs.Values[0].(*ast.BasicLit); ok && lit.Kind == token.STRING {
							return true
						}
					}
				}
			}
		}
	}
	return false
}
