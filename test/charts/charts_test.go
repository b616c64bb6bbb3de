package charts_test

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

var update = flag.Bool("update", false, "rewrite testdata/sidecar-native.json from the rendered example chart")

// goldenSidecar is the sidecar container the example chart renders with its
// default values; internal/inject's tests compare the webhook's container with
// the same file, so the chart and the webhook inject the same thing.
const goldenSidecar = "testdata/sidecar-native.json"

func TestLintIsClean(t *testing.T) {
	for _, tc := range []struct {
		name, dir   string
		kubeVersion string
	}{
		{"library", libraryChart, "v1.31.0"},
		{"injector", injectorChart, "v1.31.0"},
		{"example", exampleChart, "v1.31.0"},
		{"example-1.28", exampleChart, "v1.28.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := lintableCopy(t, tc.dir)
			kv, err := chartutil.ParseKubeVersion(tc.kubeVersion)
			if err != nil {
				t.Fatal(err)
			}
			linter := lint.AllWithKubeVersion(dir, nil, "apps", kv)
			for _, m := range linter.Messages {
				if m.Severity > support.InfoSev {
					t.Errorf("lint: %s", m)
				} else {
					t.Logf("lint: %s", m)
				}
			}
		})
	}
}

// lintableCopy returns dir itself, or for a chart with file:// dependencies a
// temporary copy with the dependencies unpacked under charts/, as
// `helm dependency build` would leave it.
func lintableCopy(t *testing.T, dir string) string {
	t.Helper()
	ch, err := loader.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ch.Metadata.Dependencies) == 0 {
		return dir
	}
	tmp := filepath.Join(t.TempDir(), filepath.Base(dir))
	if err := copyDir(dir, tmp); err != nil {
		t.Fatal(err)
	}
	for _, d := range ch.Metadata.Dependencies {
		src := filepath.Join(dir, strings.TrimPrefix(d.Repository, "file://"))
		if err := copyDir(src, filepath.Join(tmp, "charts", d.Name)); err != nil {
			t.Fatal(err)
		}
	}
	return tmp
}

func TestSchemaRejectsBadValues(t *testing.T) {
	for _, tc := range []struct {
		name, dir, values, want string
	}{
		{"log level", exampleChart, "sidebox: {logLevel: loud}", "logLevel"},
		{"mode", exampleChart, "sidebox: {mode: hybrid}", "mode"},
		{"secret name", exampleChart, "sidebox: {database: {secretName: Orders_DB}}", "secretName"},
		{"secret key", exampleChart, "sidebox: {amqp: {secretKey: ''}}", "secretKey"},
		{"outbox table", exampleChart, "sidebox: {outbox: {table: Orders.Outbox}}", "table"},
		{"port", exampleChart, "sidebox: {httpPort: 70000}", "httpPort"},
		{"unknown key", exampleChart, "sidebox: {logLevle: debug}", "logLevle"},
		{"command", exampleChart, "sidebox: {command: serve}", "command"},
		{"quantity", exampleChart, "sidebox: {resources: {limits: {memory: lots}}}", "memory"},
		{"example's own", exampleChart, "replicaCount: many", "replicaCount"},
		{"failure policy", injectorChart, "webhook: {failurePolicy: Sometimes}", "failurePolicy"},
		{"ca bundle", injectorChart, "tls: {caBundle: '<not base64>'}", "caBundle"},
		{"issuer kind", injectorChart, "tls: {certManager: {issuerRef: {name: x, kind: Vault}}}", "kind"},
		{"sidecar mode", injectorChart, "sidecarMode: sidecar", "sidecarMode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch := loadChart(t, tc.dir)
			_, err := render(t, ch, renderOptions{Values: tc.values})
			if err == nil {
				t.Fatalf("values %q rendered; want a schema error", tc.values)
			}
			if !strings.Contains(err.Error(), "schema") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error does not name the schema and %q: %v", tc.want, err)
			}
		})
	}
}

func TestRequiredValuesFailWithAMessage(t *testing.T) {
	for _, tc := range []struct {
		name, dir, values, want string
	}{
		{"database secret", exampleChart, "sidebox: {database: {secretName: ''}}", "sidebox.database.secretName is required"},
		{"amqp secret", exampleChart, "sidebox: {amqp: {secretName: ''}}", "sidebox.amqp.secretName is required"},
		{"inbox queue", exampleChart, "sidebox: {command: inbox}", "sidebox.inbox.queue is required"},
		{"tls secret", injectorChart, "tls: {certManager: {enabled: false}, caBundle: Zm9v}", "tls.secretName is required"},
		{"ca bundle", injectorChart, "tls: {certManager: {enabled: false}, secretName: webhook-tls}", "tls.caBundle is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(t, loadChart(t, tc.dir), renderOptions{Values: tc.values})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// sidecarOf returns the container named sidebox and whether it is an init container.
func sidecarOf(t *testing.T, spec corev1.PodSpec) (corev1.Container, bool) {
	t.Helper()
	var found []corev1.Container
	native := false
	for _, c := range spec.InitContainers {
		if c.Name == "sidebox" {
			found = append(found, c)
			native = true
		}
	}
	for _, c := range spec.Containers {
		if c.Name == "sidebox" {
			found = append(found, c)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one sidebox container, got %d", len(found))
	}
	return found[0], native
}

func envMap(t *testing.T, c corev1.Container) map[string]corev1.EnvVar {
	t.Helper()
	m := make(map[string]corev1.EnvVar)
	for _, e := range c.Env {
		if _, dup := m[e.Name]; dup {
			t.Errorf("env %s set twice", e.Name)
		}
		m[e.Name] = e
	}
	return m
}

func checkSecretRef(t *testing.T, env map[string]corev1.EnvVar, name, secret, key string) {
	t.Helper()
	e, ok := env[name]
	if !ok {
		t.Errorf("env %s missing", name)
		return
	}
	if e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
		t.Errorf("env %s is not read from a Secret: %+v", name, e)
		return
	}
	ref := e.ValueFrom.SecretKeyRef
	if ref.Name != secret || ref.Key != key {
		t.Errorf("env %s from secret %s/%s, want %s/%s", name, ref.Name, ref.Key, secret, key)
	}
}

func checkValue(t *testing.T, env map[string]corev1.EnvVar, name, want string) {
	t.Helper()
	e, ok := env[name]
	if !ok {
		t.Errorf("env %s missing", name)
		return
	}
	if e.Value != want || e.ValueFrom != nil {
		t.Errorf("env %s = %q (from %v), want %q", name, e.Value, e.ValueFrom, want)
	}
}

func checkHTTPProbe(t *testing.T, what string, p *corev1.Probe, path string) {
	t.Helper()
	if p == nil || p.HTTPGet == nil {
		t.Errorf("%s probe missing or not HTTP: %+v", what, p)
		return
	}
	if p.HTTPGet.Path != path || p.HTTPGet.Port != intstr.FromInt32(9719) {
		t.Errorf("%s probe on %s port %s, want %s port 9719", what, p.HTTPGet.Path, p.HTTPGet.Port.String(), path)
	}
}

// checkHardened asserts the security context the sidecar must have.
func checkHardened(t *testing.T, c corev1.Container) {
	t.Helper()
	sc := c.SecurityContext
	if sc == nil {
		t.Fatalf("%s: no securityContext", c.Name)
	}
	isTrue := func(b *bool) bool { return b != nil && *b }
	isFalse := func(b *bool) bool { return b != nil && !*b }
	if !isTrue(sc.RunAsNonRoot) {
		t.Errorf("%s: runAsNonRoot not true", c.Name)
	}
	if sc.RunAsUser == nil || *sc.RunAsUser == 0 {
		t.Errorf("%s: runAsUser not a non-root uid", c.Name)
	}
	if !isTrue(sc.ReadOnlyRootFilesystem) {
		t.Errorf("%s: readOnlyRootFilesystem not true", c.Name)
	}
	if !isFalse(sc.AllowPrivilegeEscalation) {
		t.Errorf("%s: allowPrivilegeEscalation not false", c.Name)
	}
	if sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) != 0 {
		t.Errorf("%s: capabilities %+v, want drop [ALL]", c.Name, sc.Capabilities)
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: seccompProfile %+v, want RuntimeDefault", c.Name, sc.SeccompProfile)
	}
}

func TestExampleRendersNativeSidecar(t *testing.T) {
	for _, kv := range []string{"v1.29.0", "v1.31.4", "v1.33.1-gke.1000"} {
		t.Run(kv, func(t *testing.T) {
			objs := mustRender(t, loadChart(t, exampleChart), renderOptions{KubeVersion: kv})
			dep := only[*appsv1.Deployment](t, objs)
			spec := dep.Spec.Template.Spec
			c, native := sidecarOf(t, spec)
			if !native {
				t.Fatal("sidecar is not an init container")
			}
			if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
				t.Fatalf("native sidecar restartPolicy %v, want Always", c.RestartPolicy)
			}
			if len(spec.Containers) != 1 || spec.Containers[0].Name != "orders" {
				t.Fatalf("containers %v, want only the app", containerNames(spec.Containers))
			}
			checkSidecar(t, c)
			checkHTTPProbe(t, "startup", c.StartupProbe, "/healthz")
			appEnv := envMap(t, spec.Containers[0])
			checkSecretRef(t, appEnv, "ORDERS_DATABASE_URL", "orders-database", "url")
			checkValue(t, appEnv, "ORDERS_OUTBOX_TABLE", "outbox")
			checkValue(t, appEnv, "ORDERS_COUNT", "1000000000")
			if got := dep.Spec.Template.Annotations["prometheus.io/port"]; got != "9719" {
				t.Errorf("prometheus.io/port annotation %q, want 9719", got)
			}
			if kv == "v1.29.0" {
				compareGolden(t, c)
			}
		})
	}
}

// checkSidecar asserts what both modes share.
func checkSidecar(t *testing.T, c corev1.Container) {
	t.Helper()
	if c.Image != "ghcr.io/sidebox/sidebox:0.1.0" {
		t.Errorf("image %q", c.Image)
	}
	if len(c.Args) != 1 || c.Args[0] != "run" {
		t.Errorf("args %v, want [run]", c.Args)
	}
	env := envMap(t, c)
	checkSecretRef(t, env, "SIDEBOX_DATABASE_URL", "orders-database", "url")
	checkSecretRef(t, env, "SIDEBOX_AMQP_URL", "orders-amqp", "url")
	checkValue(t, env, "SIDEBOX_OUTBOX_TABLE", "outbox")
	checkValue(t, env, "SIDEBOX_HTTP_ADDR", ":9719")
	checkValue(t, env, "SIDEBOX_LOG_LEVEL", "info")
	checkValue(t, env, "SIDEBOX_LOG_FORMAT", "json")
	if _, ok := env["SIDEBOX_INBOX_QUEUE"]; ok {
		t.Error("SIDEBOX_INBOX_QUEUE set without an inbox queue")
	}
	for name := range env {
		if !contractEnv[name] {
			t.Errorf("env %s is not a sidebox variable", name)
		}
	}
	checkHTTPProbe(t, "liveness", c.LivenessProbe, "/healthz")
	checkHTTPProbe(t, "readiness", c.ReadinessProbe, "/readyz")
	if len(c.Ports) != 1 || c.Ports[0].Name != "metrics" || c.Ports[0].ContainerPort != 9719 {
		t.Errorf("ports %+v, want metrics 9719", c.Ports)
	}
	checkHardened(t, c)
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources %+v lack a CPU request or memory limit", c.Resources)
	}
}

// contractEnv are the variables of the project's contract and design notes.
var contractEnv = map[string]bool{
	"SIDEBOX_DATABASE_URL": true, "SIDEBOX_AMQP_URL": true, "SIDEBOX_OUTBOX_TABLE": true,
	"SIDEBOX_INBOX_QUEUE": true, "SIDEBOX_INBOX_TABLE": true, "SIDEBOX_INBOX_CONSUMER": true,
	"SIDEBOX_HTTP_ADDR": true, "SIDEBOX_LOG_LEVEL": true, "SIDEBOX_LOG_FORMAT": true,
}

func containerNames(cs []corev1.Container) []string {
	var names []string
	for _, c := range cs {
		names = append(names, c.Name)
	}
	return names
}

func compareGolden(t *testing.T, c corev1.Container) {
	t.Helper()
	got := canonicalJSON(t, c)
	if *update {
		if err := os.WriteFile(goldenSidecar, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(goldenSidecar)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("sidecar differs from %s (run with -update after reviewing):\n%s", goldenSidecar, got)
	}
}

func TestExampleRendersClassicSidecar(t *testing.T) {
	for _, tc := range []struct{ name, kv, values string }{
		{"chosen", "v1.31.0", "sidebox: {mode: classic}"},
		{"kubernetes 1.28", "v1.28.9", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := mustRender(t, loadChart(t, exampleChart), renderOptions{KubeVersion: tc.kv, Values: tc.values})
			spec := only[*appsv1.Deployment](t, objs).Spec.Template.Spec
			c, native := sidecarOf(t, spec)
			if native {
				t.Fatal("sidecar is an init container in classic mode")
			}
			if c.RestartPolicy != nil {
				t.Errorf("classic sidecar has restartPolicy %v", *c.RestartPolicy)
			}
			if len(spec.InitContainers) != 0 {
				t.Errorf("init containers %v in classic mode", containerNames(spec.InitContainers))
			}
			if got := containerNames(spec.Containers); len(got) != 2 || got[0] != "orders" || got[1] != "sidebox" {
				t.Errorf("containers %v, want [orders sidebox]", got)
			}
			checkSidecar(t, c)
		})
	}
}

func TestExampleNativeForcedOnOldCluster(t *testing.T) {
	objs := mustRender(t, loadChart(t, exampleChart), renderOptions{KubeVersion: "v1.28.0", Values: "sidebox: {mode: native}"})
	if _, native := sidecarOf(t, only[*appsv1.Deployment](t, objs).Spec.Template.Spec); !native {
		t.Fatal("mode native did not render an init container")
	}
}

func TestExampleOptions(t *testing.T) {
	values := `
sidebox:
  image: {digest: "sha256:` + strings.Repeat("ab", 32) + `"}
  migrate: {enabled: true}
  inbox: {queue: orders.payments, table: app.inbox}
  outbox: {table: app.outbox}
  database: {secretKey: dsn}
  logLevel: debug
  probes: {readiness: false}
  extraEnv:
    - {name: SIDEBOX_BATCH_SIZE, value: "100"}
  extraVolumes:
    - {name: ca, configMap: {name: rabbitmq-ca}}
  extraVolumeMounts:
    - {name: ca, mountPath: /etc/sidebox/ca, readOnly: true}
  metrics: {podAnnotations: false}
podAnnotations: {team: orders}
`
	objs := mustRender(t, loadChart(t, exampleChart), renderOptions{Values: values})
	dep := only[*appsv1.Deployment](t, objs)
	spec := dep.Spec.Template.Spec
	if got := containerNames(spec.InitContainers); len(got) != 2 || got[0] != "sidebox-migrate" || got[1] != "sidebox" {
		t.Fatalf("init containers %v, want [sidebox-migrate sidebox]", got)
	}
	migrate := spec.InitContainers[0]
	if migrate.RestartPolicy != nil || strings.Join(migrate.Args, " ") != "migrate up" {
		t.Errorf("migrate container: restartPolicy %v args %v", migrate.RestartPolicy, migrate.Args)
	}
	checkHardened(t, migrate)
	menv := envMap(t, migrate)
	checkSecretRef(t, menv, "SIDEBOX_DATABASE_URL", "orders-database", "dsn")
	checkValue(t, menv, "SIDEBOX_OUTBOX_TABLE", "app.outbox")
	checkValue(t, menv, "SIDEBOX_INBOX_TABLE", "app.inbox")
	if _, ok := menv["SIDEBOX_AMQP_URL"]; ok {
		t.Error("migrate container gets the AMQP URL it does not need")
	}

	c := spec.InitContainers[1]
	if want := "ghcr.io/sidebox/sidebox@sha256:" + strings.Repeat("ab", 32); c.Image != want {
		t.Errorf("image %q, want %q", c.Image, want)
	}
	env := envMap(t, c)
	checkValue(t, env, "SIDEBOX_INBOX_QUEUE", "orders.payments")
	checkValue(t, env, "SIDEBOX_INBOX_TABLE", "app.inbox")
	checkValue(t, env, "SIDEBOX_OUTBOX_TABLE", "app.outbox")
	checkValue(t, env, "SIDEBOX_LOG_LEVEL", "debug")
	checkValue(t, env, "SIDEBOX_BATCH_SIZE", "100")
	if c.ReadinessProbe != nil {
		t.Error("readiness probe rendered with probes.readiness false")
	}
	if len(c.VolumeMounts) != 1 || len(spec.Volumes) != 1 || spec.Volumes[0].Name != c.VolumeMounts[0].Name {
		t.Errorf("volumes %+v, mounts %+v", spec.Volumes, c.VolumeMounts)
	}
	if got := dep.Spec.Template.Annotations; len(got) != 1 || got["team"] != "orders" {
		t.Errorf("pod annotations %v, want only the app's", got)
	}
}

func TestExampleInboxOnly(t *testing.T) {
	objs := mustRender(t, loadChart(t, exampleChart), renderOptions{Values: "sidebox: {command: inbox, inbox: {queue: shipping}}"})
	c, _ := sidecarOf(t, only[*appsv1.Deployment](t, objs).Spec.Template.Spec)
	env := envMap(t, c)
	if _, ok := env["SIDEBOX_OUTBOX_TABLE"]; ok {
		t.Error("inbox-only sidecar has an outbox table")
	}
	checkValue(t, env, "SIDEBOX_INBOX_QUEUE", "shipping")
	if len(c.Args) != 1 || c.Args[0] != "inbox" {
		t.Errorf("args %v, want [inbox]", c.Args)
	}
}

func TestExampleJobHasNativeSidecar(t *testing.T) {
	objs := mustRender(t, loadChart(t, exampleChart), renderOptions{Values: "job: {enabled: true, count: 1000}"})
	job := only[*batchv1.Job](t, objs)
	spec := job.Spec.Template.Spec
	if spec.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("job pod restartPolicy %q, want Never", spec.RestartPolicy)
	}
	c, native := sidecarOf(t, spec)
	if !native || c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Fatal("the Job's sidecar is not native: the Job would never complete")
	}
	app, ok := findContainer(spec.Containers, "orders")
	if !ok {
		t.Fatal("no app container")
	}
	env := envMap(t, app)
	checkValue(t, env, "ORDERS_COUNT", "1000")
	checkSecretRef(t, env, "ORDERS_DATABASE_URL", "orders-database", "url")
	if n := count[*appsv1.Deployment](objs); n != 1 {
		t.Errorf("%d Deployments next to the Job, want 1", n)
	}
}

func findContainer(cs []corev1.Container, name string) (corev1.Container, bool) {
	for _, c := range cs {
		if c.Name == name {
			return c, true
		}
	}
	return corev1.Container{}, false
}

func TestExampleSidecarDisabled(t *testing.T) {
	objs := mustRender(t, loadChart(t, exampleChart), renderOptions{Values: "sidebox: {enabled: false}"})
	dep := only[*appsv1.Deployment](t, objs)
	spec := dep.Spec.Template.Spec
	if len(spec.InitContainers) != 0 || len(spec.Containers) != 1 || len(spec.Volumes) != 0 {
		t.Errorf("disabled sidecar still rendered: init %v, containers %v", containerNames(spec.InitContainers), containerNames(spec.Containers))
	}
	if len(dep.Spec.Template.Annotations) != 0 {
		t.Errorf("annotations %v with the sidecar disabled", dep.Spec.Template.Annotations)
	}
}

func TestLibraryDefaultsMatchChart(t *testing.T) {
	for _, dir := range []string{libraryChart, injectorChart} {
		ch := loadChart(t, dir)
		image, ok := ch.Values["image"].(map[string]any)
		if !ok {
			t.Fatalf("%s: no image values", dir)
		}
		if image["tag"] != ch.Metadata.AppVersion {
			t.Errorf("%s: default image tag %v differs from appVersion %s", dir, image["tag"], ch.Metadata.AppVersion)
		}
	}
	if lib := loadChart(t, libraryChart); lib.Metadata.Type != "library" {
		t.Errorf("charts/sidebox type %q, want library", lib.Metadata.Type)
	}
}

func TestInjectorChart(t *testing.T) {
	ch := loadChart(t, injectorChart)
	objs := mustRender(t, ch, renderOptions{Namespace: "sidebox-system"})
	for _, c := range []struct {
		n    int
		want int
		what string
	}{
		{count[*corev1.ServiceAccount](objs), 1, "ServiceAccount"},
		{count[*appsv1.Deployment](objs), 1, "Deployment"},
		{count[*corev1.Service](objs), 1, "Service"},
		{count[*admissionregistrationv1.MutatingWebhookConfiguration](objs), 1, "MutatingWebhookConfiguration"},
		{count[*certManagerIssuer](objs), 1, "Issuer"},
		{count[*certManagerCertificate](objs), 1, "Certificate"},
		{count[*policyv1.PodDisruptionBudget](objs), 1, "PodDisruptionBudget"},
		{count[*corev1.Secret](objs), 0, "Secret"},
	} {
		if c.n != c.want {
			t.Errorf("%d %s, want %d", c.n, c.what, c.want)
		}
	}

	svc := only[*corev1.Service](t, objs)
	dep := only[*appsv1.Deployment](t, objs)
	cert := only[*certManagerCertificate](t, objs)
	mwc := only[*admissionregistrationv1.MutatingWebhookConfiguration](t, objs)

	if len(mwc.Webhooks) != 1 {
		t.Fatalf("%d webhooks, want 1", len(mwc.Webhooks))
	}
	wh := mwc.Webhooks[0]
	if wh.FailurePolicy == nil || *wh.FailurePolicy != admissionregistrationv1.Ignore {
		t.Errorf("failurePolicy %v, want Ignore", wh.FailurePolicy)
	}
	if wh.NamespaceSelector == nil || wh.NamespaceSelector.MatchLabels["sidebox.io/injection"] != "enabled" {
		t.Errorf("namespaceSelector %+v", wh.NamespaceSelector)
	}
	if wh.SideEffects == nil || *wh.SideEffects != admissionregistrationv1.SideEffectClassNone {
		t.Errorf("sideEffects %v, want None", wh.SideEffects)
	}
	if len(wh.AdmissionReviewVersions) != 1 || wh.AdmissionReviewVersions[0] != "v1" {
		t.Errorf("admissionReviewVersions %v", wh.AdmissionReviewVersions)
	}
	if len(wh.Rules) != 1 || strings.Join(wh.Rules[0].Resources, ",") != "pods" ||
		len(wh.Rules[0].Operations) != 1 || wh.Rules[0].Operations[0] != admissionregistrationv1.Create {
		t.Errorf("rules %+v, want CREATE pods", wh.Rules)
	}
	ref := wh.ClientConfig.Service
	if ref == nil || ref.Name != svc.Name || ref.Namespace != "sidebox-system" || ref.Path == nil || *ref.Path != "/mutate" ||
		ref.Port == nil || *ref.Port != svc.Spec.Ports[0].Port {
		t.Errorf("clientConfig.service %+v does not point at Service %s port %d", ref, svc.Name, svc.Spec.Ports[0].Port)
	}
	if len(wh.ClientConfig.CABundle) != 0 {
		t.Error("caBundle rendered although cert-manager injects it")
	}
	if got, want := mwc.Annotations["cert-manager.io/inject-ca-from"], "sidebox-system/"+cert.Metadata.Name; got != want {
		t.Errorf("inject-ca-from %q, want %q", got, want)
	}
	wantDNS := svc.Name + ".sidebox-system.svc"
	if !slices.Contains(cert.Spec.DNSNames, wantDNS) {
		t.Errorf("certificate dnsNames %v lack %s", cert.Spec.DNSNames, wantDNS)
	}
	if cert.Spec.IssuerRef.Name != only[*certManagerIssuer](t, objs).Metadata.Name {
		t.Errorf("certificate issued by %q, not the chart's issuer", cert.Spec.IssuerRef.Name)
	}

	pod := dep.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("containers %v", containerNames(pod.Containers))
	}
	c := pod.Containers[0]
	if strings.Join(c.Args, " ") != "inject" {
		t.Errorf("args %v, want [inject]", c.Args)
	}
	env := envMap(t, c)
	checkValue(t, env, "SIDEBOX_INJECT_ADDR", ":8443")
	checkValue(t, env, "SIDEBOX_INJECT_IMAGE", "ghcr.io/sidebox/sidebox:0.1.0")
	checkValue(t, env, "SIDEBOX_INJECT_TLS_CERT", "/etc/sidebox/tls/tls.crt")
	checkValue(t, env, "SIDEBOX_INJECT_TLS_KEY", "/etc/sidebox/tls/tls.key")
	checkValue(t, env, "SIDEBOX_INJECT_MODE", "native")
	checkHardened(t, c)
	if len(pod.Volumes) != 1 || pod.Volumes[0].Secret == nil || pod.Volumes[0].Secret.SecretName != cert.Spec.SecretName {
		t.Errorf("volumes %+v do not mount the certificate's Secret %s", pod.Volumes, cert.Spec.SecretName)
	}
	if len(c.Ports) != 1 || svc.Spec.Ports[0].TargetPort != intstr.FromString(c.Ports[0].Name) {
		t.Errorf("service targetPort %v does not match container ports %+v", svc.Spec.Ports[0].TargetPort, c.Ports)
	}
	for k, v := range svc.Spec.Selector {
		if pod := dep.Spec.Template.Labels[k]; pod != v {
			t.Errorf("service selector %s=%s does not match the pod (%q)", k, v, pod)
		}
	}
}

func TestInjectorRendersAreStable(t *testing.T) {
	for _, values := range []string{
		"",
		"tls: {certManager: {enabled: false}, secretName: webhook-tls, caBundle: Zm9vYmFy}",
	} {
		first, err := renderManifests(loadChart(t, injectorChart), renderOptions{Values: values})
		if err != nil {
			t.Fatal(err)
		}
		second, err := renderManifests(loadChart(t, injectorChart), renderOptions{Values: values})
		if err != nil {
			t.Fatal(err)
		}
		if len(first) != len(second) {
			t.Fatalf("renders differ in files")
		}
		for name, a := range first {
			if b := second[name]; a != b {
				t.Errorf("%s differs between two renders:\n%s\n---\n%s", name, a, b)
			}
		}
	}
}

func TestInjectorWithUserSecret(t *testing.T) {
	objs := mustRender(t, loadChart(t, injectorChart), renderOptions{Values: `
tls: {certManager: {enabled: false}, secretName: webhook-tls, caBundle: Zm9vYmFy}
webhook: {failurePolicy: Fail, namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [orders]}]}}
sidecarImage: {tag: "0.2.0"}
replicaCount: 1
`, KubeVersion: "v1.28.3"})
	if n := count[*certManagerCertificate](objs) + count[*certManagerIssuer](objs); n != 0 {
		t.Errorf("%d cert-manager objects without cert-manager", n)
	}
	if n := count[*policyv1.PodDisruptionBudget](objs); n != 0 {
		t.Errorf("PodDisruptionBudget with one replica")
	}
	mwc := only[*admissionregistrationv1.MutatingWebhookConfiguration](t, objs)
	wh := mwc.Webhooks[0]
	if string(wh.ClientConfig.CABundle) != "foobar" {
		t.Errorf("caBundle %q, want the value's", wh.ClientConfig.CABundle)
	}
	if _, ok := mwc.Annotations["cert-manager.io/inject-ca-from"]; ok {
		t.Error("inject-ca-from annotation without cert-manager")
	}
	if *wh.FailurePolicy != admissionregistrationv1.Fail || len(wh.NamespaceSelector.MatchExpressions) != 1 {
		t.Errorf("webhook values not applied: %+v", wh)
	}
	dep := only[*appsv1.Deployment](t, objs)
	if got := dep.Spec.Template.Spec.Volumes[0].Secret.SecretName; got != "webhook-tls" {
		t.Errorf("TLS volume from %q, want webhook-tls", got)
	}
	env := envMap(t, dep.Spec.Template.Spec.Containers[0])
	checkValue(t, env, "SIDEBOX_INJECT_IMAGE", "ghcr.io/sidebox/sidebox:0.2.0")
	checkValue(t, env, "SIDEBOX_INJECT_MODE", "classic") // Kubernetes 1.28
}

// TestNoGeneratedSecrets guards against templates that make a new certificate
// or secret on every render.
func TestNoGeneratedSecrets(t *testing.T) {
	random := regexp.MustCompile(`\b(genCA|genPrivateKey|genSelfSignedCert|genSignedCert|genCAWithKey|genSelfSignedCertWithKey|genSignedCertWithKey|randAlpha|randAlphaNum|randAscii|randNumeric|randBytes|uuidv4|now)\b`)
	err := filepath.WalkDir(chartsDir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if !strings.Contains(path, string(filepath.Separator)+"templates"+string(filepath.Separator)) {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if m := random.Find(data); m != nil {
			t.Errorf("%s uses %s: renders must be reproducible", path, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
