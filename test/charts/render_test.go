package charts_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// chartsDir is the repository's charts/ directory, seen from this module.
const chartsDir = "../../charts"

const (
	libraryChart  = chartsDir + "/sidebox"
	injectorChart = chartsDir + "/sidebox-injector"
	exampleChart  = chartsDir + "/examples/orders"
)

// object is one rendered manifest, decoded into its typed API object.
type object struct {
	Source string // template file
	Kind   string
	Name   string
	Obj    any
}

// certManagerIssuer and certManagerCertificate are the parts of cert-manager's
// v1 API the injector chart uses; decoding into them is strict like the rest,
// so a misspelt field fails a test.
type certManagerIssuer struct {
	APIVersion string                `json:"apiVersion"`
	Kind       string                `json:"kind"`
	Metadata   objectMeta            `json:"metadata"`
	Spec       certManagerIssuerSpec `json:"spec"`
}

type certManagerIssuerSpec struct {
	SelfSigned *struct{} `json:"selfSigned,omitempty"`
}

type certManagerCertificate struct {
	APIVersion string                     `json:"apiVersion"`
	Kind       string                     `json:"kind"`
	Metadata   objectMeta                 `json:"metadata"`
	Spec       certManagerCertificateSpec `json:"spec"`
}

type certManagerCertificateSpec struct {
	SecretName  string   `json:"secretName"`
	CommonName  string   `json:"commonName,omitempty"`
	DNSNames    []string `json:"dnsNames"`
	Duration    string   `json:"duration,omitempty"`
	RenewBefore string   `json:"renewBefore,omitempty"`
	PrivateKey  *struct {
		Algorithm      string `json:"algorithm,omitempty"`
		Size           int    `json:"size,omitempty"`
		RotationPolicy string `json:"rotationPolicy,omitempty"`
	} `json:"privateKey,omitempty"`
	Usages    []string `json:"usages,omitempty"`
	IssuerRef struct {
		Name  string `json:"name"`
		Kind  string `json:"kind,omitempty"`
		Group string `json:"group,omitempty"`
	} `json:"issuerRef"`
}

// objectMeta is the subset of ObjectMeta the charts set on custom resources.
type objectMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// newObject returns a pointer to the typed object for apiVersion and kind, or
// an error for a kind the charts are not expected to render.
func newObject(apiVersion, kind string) (any, error) {
	switch apiVersion + "/" + kind {
	case "v1/Service":
		return &corev1.Service{}, nil
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}, nil
	case "v1/Secret":
		return &corev1.Secret{}, nil
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}, nil
	case "apps/v1/StatefulSet":
		return &appsv1.StatefulSet{}, nil
	case "batch/v1/Job":
		return &batchv1.Job{}, nil
	case "batch/v1/CronJob":
		return &batchv1.CronJob{}, nil
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, nil
	case "admissionregistration.k8s.io/v1/MutatingWebhookConfiguration":
		return &admissionregistrationv1.MutatingWebhookConfiguration{}, nil
	case "cert-manager.io/v1/Issuer":
		return &certManagerIssuer{}, nil
	case "cert-manager.io/v1/Certificate":
		return &certManagerCertificate{}, nil
	}
	return nil, fmt.Errorf("unexpected object %s %s", apiVersion, kind)
}

// decodeStrict decodes one YAML document into its typed object, refusing
// unknown, misspelt (also by case) and duplicate fields.
func decodeStrict(doc []byte) (kind, name string, obj any, err error) {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return "", "", nil, fmt.Errorf("yaml: %w", err)
	}
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(js, &head); err != nil {
		return "", "", nil, fmt.Errorf("head: %w", err)
	}
	obj, err = newObject(head.APIVersion, head.Kind)
	if err != nil {
		return "", "", nil, err
	}
	strict, err := kjson.UnmarshalStrict(js, obj)
	if err != nil {
		return "", "", nil, fmt.Errorf("%s %s: %w", head.Kind, head.Metadata.Name, err)
	}
	if len(strict) > 0 {
		return "", "", nil, fmt.Errorf("%s %s: %w", head.Kind, head.Metadata.Name, errors.Join(strict...))
	}
	return head.Kind, head.Metadata.Name, obj, nil
}

// loadChart loads a chart directory. A chart whose Chart.yaml depends on the
// sidebox library (file://) gets the library loaded from charts/sidebox, so
// rendering needs neither `helm dependency build` nor a network.
func loadChart(t *testing.T, dir string) *chart.Chart {
	t.Helper()
	ch, err := loader.Load(dir)
	if err != nil {
		t.Fatalf("load %s: %v", dir, err)
	}
	var deps []*chart.Chart
	for _, d := range ch.Metadata.Dependencies {
		if d.Name != "sidebox" || !strings.HasPrefix(d.Repository, "file://") {
			t.Fatalf("%s: unexpected dependency %s from %s", dir, d.Name, d.Repository)
		}
		lib, err := loader.Load(filepath.Join(dir, strings.TrimPrefix(d.Repository, "file://")))
		if err != nil {
			t.Fatalf("load dependency of %s: %v", dir, err)
		}
		deps = append(deps, lib)
	}
	if len(deps) > 0 {
		ch.SetDependencies(deps...)
	}
	return ch
}

// renderOptions select the cluster and release a chart is rendered for.
type renderOptions struct {
	KubeVersion string // "v1.29.0"; empty = v1.31.0
	Namespace   string // empty = "apps"
	Values      string // YAML merged over the chart's values.yaml
}

// render renders ch like `helm template` would (dependencies, schema
// validation, capabilities) and decodes every object strictly.
func render(t *testing.T, ch *chart.Chart, opts renderOptions) ([]object, error) {
	t.Helper()
	manifests, err := renderManifests(ch, opts)
	if err != nil {
		return nil, err
	}
	var names []string
	for name := range manifests {
		names = append(names, name)
	}
	sort.Strings(names)
	var objs []object
	for _, name := range names {
		if !strings.HasSuffix(name, ".yaml") {
			continue
		}
		docs := releaseutil.SplitManifests(manifests[name])
		keys := make([]string, 0, len(docs))
		for k := range docs {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool { return manifestIndex(keys[i]) < manifestIndex(keys[j]) })
		for _, k := range keys {
			doc := docs[k]
			if isEmptyYAML(doc) {
				continue
			}
			kind, objName, obj, err := decodeStrict([]byte(doc))
			if err != nil {
				t.Fatalf("%s: %v\n%s", name, err, doc)
			}
			objs = append(objs, object{Source: name, Kind: kind, Name: objName, Obj: obj})
		}
	}
	return objs, nil
}

// renderManifests returns the rendered templates by file name.
func renderManifests(ch *chart.Chart, opts renderOptions) (map[string]string, error) {
	kv := opts.KubeVersion
	if kv == "" {
		kv = "v1.31.0"
	}
	ns := opts.Namespace
	if ns == "" {
		ns = "apps"
	}
	vals, err := chartutil.ReadValues([]byte(opts.Values))
	if err != nil {
		return nil, fmt.Errorf("values: %w", err)
	}
	if err := chartutil.ProcessDependenciesWithMerge(ch, vals); err != nil {
		return nil, fmt.Errorf("dependencies: %w", err)
	}
	kubeVersion, err := chartutil.ParseKubeVersion(kv)
	if err != nil {
		return nil, err
	}
	caps := chartutil.DefaultCapabilities.Copy()
	caps.KubeVersion = *kubeVersion
	top, err := chartutil.ToRenderValues(ch, vals, chartutil.ReleaseOptions{
		Name: "demo", Namespace: ns, Revision: 1, IsInstall: true,
	}, caps)
	if err != nil {
		return nil, err
	}
	e := engine.Engine{Strict: true}
	out, err := e.Render(ch, top)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// manifestIndex orders the keys of releaseutil.SplitManifests ("manifest-N").
func manifestIndex(key string) int {
	var n int
	_, _ = fmt.Sscanf(key, "manifest-%d", &n)
	return n
}

func isEmptyYAML(doc string) bool {
	for _, line := range strings.Split(doc, "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") {
			return false
		}
	}
	return true
}

// mustRender renders and fails the test on an error.
func mustRender(t *testing.T, ch *chart.Chart, opts renderOptions) []object {
	t.Helper()
	objs, err := render(t, ch, opts)
	if err != nil {
		t.Fatalf("render %s: %v", ch.Name(), err)
	}
	return objs
}

// only returns the single object of type T, failing unless there is exactly one.
func only[T any](t *testing.T, objs []object) T {
	t.Helper()
	var found []T
	for _, o := range objs {
		if v, ok := o.Obj.(T); ok {
			found = append(found, v)
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("want exactly one %T, got %d", zero, len(found))
	}
	return found[0]
}

// count returns how many objects are of type T.
func count[T any](objs []object) int {
	n := 0
	for _, o := range objs {
		if _, ok := o.Obj.(T); ok {
			n++
		}
	}
	return n
}

// copyDir copies the directory tree src to dst.
func copyDir(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o644)
	})
}

// canonicalJSON re-encodes v with sorted keys and indentation, for comparisons
// and golden files.
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
