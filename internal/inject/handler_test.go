package inject_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"go.uber.org/zap/zaptest"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	kjson "sigs.k8s.io/json"

	"github.com/sidebox/sidebox/internal/inject"
)

const testImage = "ghcr.io/sidebox/sidebox:0.1.0"

// goldenSidecar is the container the example chart renders with its default
// values (test/charts keeps it in step with the chart): the webhook must
// inject the same container for the same settings.
const goldenSidecar = "../../test/charts/testdata/sidecar-native.json"

func newServer(t *testing.T, mode string) *httptest.Server {
	t.Helper()
	cfg := inject.Config{Addr: ":8443", TLSCert: "unused", TLSKey: "unused", Image: testImage, Mode: mode}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(inject.NewHandler(cfg, zaptest.NewLogger(t)))
	t.Cleanup(srv.Close)
	return srv
}

func appPod(annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "orders-7d9f8-",
			Namespace:    "apps",
			Labels:       map[string]string{"app": "orders"},
			Annotations:  annotations,
		},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name:  "orders",
				Image: "ghcr.io/sidebox/example-orders:0.1.0",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
			}},
		},
	}
}

func annotated(extra map[string]string) map[string]string {
	a := map[string]string{
		inject.AnnotationInject:         "true",
		inject.AnnotationDatabaseSecret: "orders-database",
		inject.AnnotationAMQPSecret:     "orders-amqp",
	}
	for k, v := range extra {
		a[k] = v
	}
	return a
}

func reviewOf(t *testing.T, pod *corev1.Pod) []byte {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	review := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       types.UID("0d5f6f9a-0c1e-4d6a-9d52-6b8f1b1f2a11"),
			Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: "apps",
			Operation: admissionv1.Create,
			Object:    runtime.RawExtension{Raw: raw},
		},
	}
	body, err := json.Marshal(review)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// editedReview returns the review of pod after edit changed it.
func editedReview(t *testing.T, pod *corev1.Pod, edit func(*admissionv1.AdmissionReview)) []byte {
	t.Helper()
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(reviewOf(t, pod), &review); err != nil {
		t.Fatal(err)
	}
	edit(&review)
	body, err := json.Marshal(review)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// post sends body to /mutate and returns the status code and body.
func post(t *testing.T, srv *httptest.Server, contentType string, body []byte) (int, []byte) {
	t.Helper()
	resp, err := srv.Client().Post(srv.URL+inject.PathMutate, contentType, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, out
}

// postReview posts body and returns the response, requiring only status 200
// and a decodable review with a response.
func postReview(t *testing.T, srv *httptest.Server, body []byte) *admissionv1.AdmissionResponse {
	t.Helper()
	code, out := post(t, srv, "application/json", body)
	var resp admissionv1.AdmissionReview
	if code != http.StatusOK || json.Unmarshal(out, &resp) != nil || resp.Response == nil {
		t.Fatalf("status %d: %s", code, out)
	}
	return resp.Response
}

// admit posts the pod's review and returns the response, checking the
// envelope the API server requires.
func admit(t *testing.T, srv *httptest.Server, pod *corev1.Pod) *admissionv1.AdmissionResponse {
	t.Helper()
	code, body := post(t, srv, "application/json", reviewOf(t, pod))
	if code != http.StatusOK {
		t.Fatalf("status %d: %s", code, body)
	}
	var review admissionv1.AdmissionReview
	if strict, err := kjson.UnmarshalStrict(body, &review); err != nil || len(strict) > 0 {
		t.Fatalf("decode response: %v %v\n%s", err, strict, body)
	}
	if review.APIVersion != "admission.k8s.io/v1" || review.Kind != "AdmissionReview" || review.Response == nil {
		t.Fatalf("response envelope %s %s, response %v", review.APIVersion, review.Kind, review.Response)
	}
	if review.Response.UID != "0d5f6f9a-0c1e-4d6a-9d52-6b8f1b1f2a11" {
		t.Fatalf("response UID %q does not echo the request's", review.Response.UID)
	}
	return review.Response
}

// applyPatch applies the response's JSON patch to pod and decodes the result
// strictly into a Pod.
func applyPatch(t *testing.T, pod *corev1.Pod, resp *admissionv1.AdmissionResponse) *corev1.Pod {
	t.Helper()
	if !resp.Allowed {
		t.Fatalf("pod refused: %+v", resp.Result)
	}
	if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch || len(resp.Patch) == 0 {
		t.Fatalf("no JSON patch in response: type %v, %q", resp.PatchType, resp.Patch)
	}
	patch, err := jsonpatch.DecodePatch(resp.Patch)
	if err != nil {
		t.Fatalf("decode patch: %v\n%s", err, resp.Patch)
	}
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	patched, err := patch.Apply(raw)
	if err != nil {
		t.Fatalf("apply patch: %v\n%s", err, resp.Patch)
	}
	var out corev1.Pod
	if strict, err := kjson.UnmarshalStrict(patched, &out); err != nil || len(strict) > 0 {
		t.Fatalf("patched pod does not decode: %v %v\n%s", err, strict, patched)
	}
	return &out
}

func find(cs []corev1.Container, name string) (corev1.Container, bool) {
	for _, c := range cs {
		if c.Name == name {
			return c, true
		}
	}
	return corev1.Container{}, false
}

func names(cs []corev1.Container) string {
	var n []string
	for _, c := range cs {
		n = append(n, c.Name)
	}
	return strings.Join(n, ",")
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

func env(c corev1.Container) map[string]corev1.EnvVar {
	m := make(map[string]corev1.EnvVar)
	for _, e := range c.Env {
		m[e.Name] = e
	}
	return m
}

func TestAnnotatedPodGetsNativeSidecar(t *testing.T) {
	srv := newServer(t, inject.ModeNative)
	pod := appPod(annotated(nil))
	got := applyPatch(t, pod, admit(t, srv, pod))

	if names(got.Spec.InitContainers) != "sidebox" || names(got.Spec.Containers) != "orders" {
		t.Fatalf("init containers [%s], containers [%s]; want [sidebox], [orders]", names(got.Spec.InitContainers), names(got.Spec.Containers))
	}
	c := got.Spec.InitContainers[0]
	if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("restartPolicy %v, want Always", c.RestartPolicy)
	}
	e := env(c)
	for name, secret := range map[string]string{"SIDEBOX_DATABASE_URL": "orders-database", "SIDEBOX_AMQP_URL": "orders-amqp"} {
		ref := e[name].ValueFrom
		if ref == nil || ref.SecretKeyRef == nil || ref.SecretKeyRef.Name != secret || ref.SecretKeyRef.Key != "url" || e[name].Value != "" {
			t.Errorf("%s = %+v, want secret %s key url", name, e[name], secret)
		}
	}
	if e["SIDEBOX_OUTBOX_TABLE"].Value != "outbox" {
		t.Errorf("SIDEBOX_OUTBOX_TABLE = %q", e["SIDEBOX_OUTBOX_TABLE"].Value)
	}
	for probe, p := range map[string]*corev1.Probe{"/healthz": c.StartupProbe, "/readyz": c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != probe || p.HTTPGet.Port != intstr.FromInt32(inject.Port) {
			t.Errorf("probe %s: %+v", probe, p)
		}
	}
	sc := c.SecurityContext
	if sc == nil || !*sc.RunAsNonRoot || !*sc.ReadOnlyRootFilesystem || *sc.AllowPrivilegeEscalation ||
		len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("securityContext %+v", sc)
	}
	if got.Annotations[inject.AnnotationStatus] != inject.StatusInjected {
		t.Errorf("status annotation %q", got.Annotations[inject.AnnotationStatus])
	}
	if got.Annotations[inject.AnnotationDatabaseSecret] != "orders-database" || got.Labels["app"] != "orders" {
		t.Error("patch lost the pod's own metadata")
	}

	want, err := os.ReadFile(goldenSidecar)
	if err != nil {
		t.Fatal(err)
	}
	if js := canonicalJSON(t, c); !bytes.Equal(js, want) {
		t.Errorf("injected container differs from the library chart's (%s):\n%s", goldenSidecar, js)
	}
}

func TestClassicSidecar(t *testing.T) {
	for _, tc := range []struct {
		name, mode string
		extra      map[string]string
	}{
		{"annotation", inject.ModeNative, map[string]string{inject.AnnotationNativeSidecar: "false"}},
		{"server default", inject.ModeClassic, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newServer(t, tc.mode)
			pod := appPod(annotated(tc.extra))
			got := applyPatch(t, pod, admit(t, srv, pod))
			if len(got.Spec.InitContainers) != 0 || names(got.Spec.Containers) != "orders,sidebox" {
				t.Fatalf("init containers [%s], containers [%s]; want [], [orders,sidebox]", names(got.Spec.InitContainers), names(got.Spec.Containers))
			}
			c := got.Spec.Containers[1]
			if c.RestartPolicy != nil {
				t.Errorf("classic sidecar has restartPolicy %v", *c.RestartPolicy)
			}
			if c.ReadinessProbe == nil || c.LivenessProbe == nil || c.StartupProbe == nil {
				t.Error("classic sidecar lacks a probe")
			}
		})
	}
	t.Run("native override", func(t *testing.T) {
		srv := newServer(t, inject.ModeClassic)
		pod := appPod(annotated(map[string]string{inject.AnnotationNativeSidecar: "true"}))
		got := applyPatch(t, pod, admit(t, srv, pod))
		if names(got.Spec.InitContainers) != "sidebox" {
			t.Fatalf("init containers [%s], want [sidebox]", names(got.Spec.InitContainers))
		}
	})
}

func TestAllSettings(t *testing.T) {
	srv := newServer(t, inject.ModeNative)
	pod := appPod(annotated(map[string]string{
		inject.AnnotationImage:          "registry.example/sidebox@sha256:" + strings.Repeat("0", 64),
		inject.AnnotationDatabaseKey:    "dsn",
		inject.AnnotationAMQPKey:        "uris",
		inject.AnnotationOutboxTable:    "app.outbox",
		inject.AnnotationInboxQueue:     "orders.payments",
		inject.AnnotationInboxTable:     "app.inbox",
		inject.AnnotationLogLevel:       "debug",
		inject.AnnotationLogFormat:      "console",
		inject.AnnotationMigrate:        "true",
		inject.AnnotationReadinessProbe: "false",
		inject.AnnotationCommand:        "run",
	}))
	pod.Spec.InitContainers = []corev1.Container{{Name: "schema", Image: "ghcr.io/sidebox/example-orders:0.1.0", Args: []string{"migrate"}}}
	got := applyPatch(t, pod, admit(t, srv, pod))

	if n := names(got.Spec.InitContainers); n != "schema,sidebox-migrate,sidebox" {
		t.Fatalf("init containers [%s], want the pod's own first, then sidebox-migrate, then sidebox", n)
	}
	mig, side := got.Spec.InitContainers[1], got.Spec.InitContainers[2]
	if strings.Join(mig.Args, " ") != "migrate up" || mig.RestartPolicy != nil {
		t.Errorf("migrate container args %v restartPolicy %v", mig.Args, mig.RestartPolicy)
	}
	if _, ok := env(mig)["SIDEBOX_AMQP_URL"]; ok {
		t.Error("migrate container gets the AMQP URL")
	}
	e := env(side)
	for name, want := range map[string]string{
		"SIDEBOX_OUTBOX_TABLE": "app.outbox", "SIDEBOX_INBOX_QUEUE": "orders.payments",
		"SIDEBOX_INBOX_TABLE": "app.inbox", "SIDEBOX_LOG_LEVEL": "debug", "SIDEBOX_LOG_FORMAT": "console",
	} {
		if e[name].Value != want {
			t.Errorf("%s = %q, want %q", name, e[name].Value, want)
		}
	}
	if e["SIDEBOX_DATABASE_URL"].ValueFrom.SecretKeyRef.Key != "dsn" || e["SIDEBOX_AMQP_URL"].ValueFrom.SecretKeyRef.Key != "uris" {
		t.Error("secret keys not taken from the annotations")
	}
	if side.ReadinessProbe != nil {
		t.Error("readiness probe despite sidebox.io/readiness-probe: false")
	}
	if !strings.HasPrefix(side.Image, "registry.example/sidebox@sha256:") || side.Image != mig.Image {
		t.Errorf("images %q %q, want the annotation's", side.Image, mig.Image)
	}
}

func TestInboxOnly(t *testing.T) {
	srv := newServer(t, inject.ModeNative)
	pod := appPod(annotated(map[string]string{inject.AnnotationCommand: "inbox", inject.AnnotationInboxQueue: "shipping"}))
	got := applyPatch(t, pod, admit(t, srv, pod))
	side, _ := find(got.Spec.InitContainers, "sidebox")
	if _, ok := env(side)["SIDEBOX_OUTBOX_TABLE"]; ok || strings.Join(side.Args, " ") != "inbox" {
		t.Errorf("inbox-only sidecar: args %v, env %v", side.Args, side.Env)
	}
}

func TestPodsPassUntouched(t *testing.T) {
	srv := newServer(t, inject.ModeNative)
	injectedPod := appPod(annotated(nil))
	injectedPod.Spec.InitContainers = []corev1.Container{{Name: "sidebox", Image: testImage}}
	statusOnly := appPod(annotated(map[string]string{inject.AnnotationStatus: inject.StatusInjected}))
	classicByChart := appPod(annotated(nil))
	classicByChart.Spec.Containers = append(classicByChart.Spec.Containers, corev1.Container{Name: "sidebox", Image: testImage})

	for name, pod := range map[string]*corev1.Pod{
		"no annotations":       appPod(nil),
		"other annotations":    appPod(map[string]string{"team": "orders"}),
		"inject false":         appPod(map[string]string{inject.AnnotationInject: "false"}),
		"already native":       injectedPod,
		"already classic":      classicByChart,
		"status annotation":    statusOnly,
		"settings without opt": appPod(map[string]string{inject.AnnotationDatabaseSecret: "x"}),
	} {
		t.Run(name, func(t *testing.T) {
			resp := admit(t, srv, pod)
			if !resp.Allowed || len(resp.Patch) != 0 || resp.PatchType != nil {
				t.Errorf("allowed %v, patch %q; want allowed without a patch", resp.Allowed, resp.Patch)
			}
		})
	}
}

func TestInjectionIsIdempotent(t *testing.T) {
	srv := newServer(t, inject.ModeNative)
	pod := appPod(annotated(nil))
	once := applyPatch(t, pod, admit(t, srv, pod))
	// A second pass (reinvocation, or a pod re-created from a dump) over the
	// patched pod, without the status annotation, must not add a second sidecar.
	delete(once.Annotations, inject.AnnotationStatus)
	resp := admit(t, srv, once)
	if !resp.Allowed || len(resp.Patch) != 0 {
		t.Fatalf("patched pod patched again: %s", resp.Patch)
	}
}

func TestOtherRequestsPass(t *testing.T) {
	srv := newServer(t, inject.ModeNative)
	pod := appPod(annotated(nil))
	for name, mutate := range map[string]func(*admissionv1.AdmissionRequest){
		"update":      func(r *admissionv1.AdmissionRequest) { r.Operation = admissionv1.Update },
		"subresource": func(r *admissionv1.AdmissionRequest) { r.SubResource = "ephemeralcontainers" },
		"not a pod": func(r *admissionv1.AdmissionRequest) {
			r.Kind = metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}
			r.Resource = metav1.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}
		},
	} {
		t.Run(name, func(t *testing.T) {
			resp := postReview(t, srv, editedReview(t, pod, func(r *admissionv1.AdmissionReview) { mutate(r.Request) }))
			if !resp.Allowed || len(resp.Patch) != 0 {
				t.Errorf("allowed %v patch %q", resp.Allowed, resp.Patch)
			}
		})
	}
}

func TestInvalidAnnotationsAreRefused(t *testing.T) {
	srv := newServer(t, inject.ModeNative)
	for _, tc := range []struct {
		name        string
		annotations map[string]string
		want        string
	}{
		{"no database secret", map[string]string{inject.AnnotationInject: "true", inject.AnnotationAMQPSecret: "a"}, inject.AnnotationDatabaseSecret},
		{"no amqp secret", map[string]string{inject.AnnotationInject: "true", inject.AnnotationDatabaseSecret: "d"}, inject.AnnotationAMQPSecret},
		{"inject not a bool", map[string]string{inject.AnnotationInject: "yes please"}, inject.AnnotationInject},
		{"secret name", annotated(map[string]string{inject.AnnotationDatabaseSecret: "Orders_DB"}), inject.AnnotationDatabaseSecret},
		{"secret key", annotated(map[string]string{inject.AnnotationAMQPKey: "a key"}), inject.AnnotationAMQPKey},
		{"outbox table", annotated(map[string]string{inject.AnnotationOutboxTable: "Outbox"}), inject.AnnotationOutboxTable},
		{"inbox table", annotated(map[string]string{inject.AnnotationInboxTable: "a.b.c"}), inject.AnnotationInboxTable},
		{"log level", annotated(map[string]string{inject.AnnotationLogLevel: "loud"}), inject.AnnotationLogLevel},
		{"log format", annotated(map[string]string{inject.AnnotationLogFormat: "xml"}), inject.AnnotationLogFormat},
		{"command", annotated(map[string]string{inject.AnnotationCommand: "serve"}), inject.AnnotationCommand},
		{"inbox without queue", annotated(map[string]string{inject.AnnotationCommand: "inbox"}), inject.AnnotationInboxQueue},
		{"native not a bool", annotated(map[string]string{inject.AnnotationNativeSidecar: "maybe"}), inject.AnnotationNativeSidecar},
		{"image", annotated(map[string]string{inject.AnnotationImage: "an image"}), inject.AnnotationImage},
		{"misspelt", annotated(map[string]string{"sidebox.io/outbox-tabel": "orders_outbox"}), "sidebox.io/outbox-tabel"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := admit(t, srv, appPod(tc.annotations))
			if resp.Allowed || len(resp.Patch) != 0 {
				t.Fatalf("allowed %v with patch %q; want a refusal", resp.Allowed, resp.Patch)
			}
			if resp.Result == nil || resp.Result.Code != http.StatusUnprocessableEntity || !strings.Contains(resp.Result.Message, tc.want) {
				t.Errorf("result %+v does not name %s", resp.Result, tc.want)
			}
		})
	}
}

func TestMalformedRequests(t *testing.T) {
	srv := newServer(t, inject.ModeNative)
	pod := appPod(annotated(nil))
	valid := reviewOf(t, pod)
	oldVersion := editedReview(t, pod, func(r *admissionv1.AdmissionReview) { r.APIVersion = "admission.k8s.io/v1beta1" })

	for _, tc := range []struct {
		name, contentType string
		body              []byte
		code              int
	}{
		{"not json", "application/json", []byte("{{{ not json"), http.StatusBadRequest},
		{"empty", "application/json", nil, http.StatusBadRequest},
		{"wrong type", "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":"pod"}`), http.StatusBadRequest},
		{"no request", "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`), http.StatusBadRequest},
		{"no uid", "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"operation":"CREATE"}}`), http.StatusBadRequest},
		{"v1beta1", "application/json", oldVersion, http.StatusBadRequest},
		{"not a review", "application/json", []byte(`{"apiVersion":"v1","kind":"Pod"}`), http.StatusBadRequest},
		{"content type", "text/plain", valid, http.StatusUnsupportedMediaType},
		{"no content type", "", valid, http.StatusUnsupportedMediaType},
		{"too large", "application/json", bytes.Repeat([]byte(" "), 9<<20), http.StatusRequestEntityTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := post(t, srv, tc.contentType, tc.body)
			if code != tc.code {
				t.Errorf("status %d (%s), want %d", code, body, tc.code)
			}
		})
	}

	t.Run("pod does not decode", func(t *testing.T) {
		resp := postReview(t, srv, editedReview(t, pod, func(r *admissionv1.AdmissionReview) {
			r.Request.Object.Raw = []byte(`{"spec":{"containers":"many"}}`)
		}))
		if resp.Allowed || resp.Result == nil || resp.Result.Code != http.StatusBadRequest {
			t.Errorf("response %+v, want a refusal with code 400", resp)
		}
	})

	t.Run("wrong method", func(t *testing.T) {
		resp, err := srv.Client().Get(srv.URL + inject.PathMutate)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("GET %s: status %d", inject.PathMutate, resp.StatusCode)
		}
	})

	// The server survived all of the above.
	resp := admit(t, srv, appPod(annotated(nil)))
	if !resp.Allowed || len(resp.Patch) == 0 {
		t.Fatalf("valid review after malformed ones: allowed %v patch %q", resp.Allowed, resp.Patch)
	}
}

func TestHealthz(t *testing.T) {
	srv := newServer(t, inject.ModeNative)
	resp, err := srv.Client().Get(srv.URL + inject.PathHealthz)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("healthz: status %d", resp.StatusCode)
	}
}

func TestConfigValidate(t *testing.T) {
	good := inject.Config{Addr: ":8443", TLSCert: "/tls/tls.crt", TLSKey: "/tls/tls.key", Image: testImage, Mode: inject.ModeNative}
	if err := good.Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	for _, tc := range []struct {
		variable string
		change   func(*inject.Config)
	}{
		{"SIDEBOX_INJECT_IMAGE", func(c *inject.Config) { c.Image = "" }},
		{"SIDEBOX_INJECT_IMAGE", func(c *inject.Config) { c.Image = "two words" }},
		{"SIDEBOX_INJECT_TLS_CERT", func(c *inject.Config) { c.TLSCert = "" }},
		{"SIDEBOX_INJECT_TLS_KEY", func(c *inject.Config) { c.TLSKey = "" }},
		{"SIDEBOX_INJECT_ADDR", func(c *inject.Config) { c.Addr = "8443" }},
		{"SIDEBOX_INJECT_ADDR", func(c *inject.Config) { c.Addr = ":https-ish" }},
		{"SIDEBOX_INJECT_MODE", func(c *inject.Config) { c.Mode = "hybrid" }},
	} {
		t.Run(tc.variable, func(t *testing.T) {
			cfg := good
			tc.change(&cfg)
			err := cfg.Validate()
			var ce *inject.ConfigError
			if !errors.As(err, &ce) || ce.Var != tc.variable {
				t.Fatalf("got %v, want a *ConfigError for %s", err, tc.variable)
			}
			var marked interface{ ConfigError() bool }
			if !errors.As(err, &marked) || !marked.ConfigError() {
				t.Error("error does not mark itself as a configuration error")
			}
			if !strings.HasPrefix(err.Error(), tc.variable+": ") {
				t.Errorf("message %q does not start with the variable", err)
			}
		})
	}
}
