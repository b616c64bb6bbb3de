package inject

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/sidebox/sidebox/internal/pg"
)

// Names of the injected containers and of the port of /healthz, /readyz and
// /metrics. They are the same as the library chart's (charts/sidebox).
const (
	ContainerName        = "sidebox"
	MigrateContainerName = "sidebox-migrate"
	PortName             = "metrics"
	Port                 = 9719
)

// Pod annotations. All but AnnotationStatus are set by users on pod
// templates; AnnotationStatus is set by the webhook on the pods it patched.
const (
	AnnotationPrefix         = "sidebox.io/"
	AnnotationInject         = AnnotationPrefix + "inject"
	AnnotationStatus         = AnnotationPrefix + "status"
	AnnotationImage          = AnnotationPrefix + "image"
	AnnotationNativeSidecar  = AnnotationPrefix + "native-sidecar"
	AnnotationCommand        = AnnotationPrefix + "command"
	AnnotationDatabaseSecret = AnnotationPrefix + "database-secret"
	AnnotationDatabaseKey    = AnnotationPrefix + "database-secret-key"
	AnnotationAMQPSecret     = AnnotationPrefix + "amqp-secret"
	AnnotationAMQPKey        = AnnotationPrefix + "amqp-secret-key"
	AnnotationOutboxTable    = AnnotationPrefix + "outbox-table"
	AnnotationInboxQueue     = AnnotationPrefix + "inbox-queue"
	AnnotationInboxTable     = AnnotationPrefix + "inbox-table"
	AnnotationLogLevel       = AnnotationPrefix + "log-level"
	AnnotationLogFormat      = AnnotationPrefix + "log-format"
	AnnotationMigrate        = AnnotationPrefix + "migrate"
	AnnotationReadinessProbe = AnnotationPrefix + "readiness-probe"

	// StatusInjected is the value of AnnotationStatus on a patched pod.
	StatusInjected = "injected"
)

// settings is what a pod's annotations ask for, validated.
type settings struct {
	image          string
	native         bool
	command        string
	databaseSecret string
	databaseKey    string
	amqpSecret     string
	amqpKey        string
	outboxTable    string
	inboxQueue     string
	inboxTable     string
	logLevel       string
	logFormat      string
	migrate        bool
	readiness      bool
}

// annotationError is an annotation whose value the webhook cannot use; the
// pod is refused with its message.
type annotationError struct {
	annotation string
	problem    string
}

func (e *annotationError) Error() string {
	return "annotation " + e.annotation + ": " + e.problem
}

var (
	// dnsSubdomain is a Secret name (RFC 1123 subdomain).
	dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	// secretKey is a key of a Secret's data.
	secretKey = regexp.MustCompile(`^[-._a-zA-Z0-9]+$`)
)

// Allowed values of the enumerated annotations.
func logLevels() []string {
	return []string{"debug", "info", "warn", "error", "dpanic", "panic", "fatal"}
}
func logFormats() []string { return []string{"json", "console"} }
func commands() []string   { return []string{"run", "relay", "inbox"} }

// wantsInjection reports whether the pod opted in with sidebox.io/inject.
func wantsInjection(annotations map[string]string) (bool, error) {
	v, ok := annotations[AnnotationInject]
	if !ok {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, &annotationError{AnnotationInject, fmt.Sprintf("want \"true\" or \"false\", got %q", v)}
	}
	return b, nil
}

// known reports whether key is an annotation a pod may set; any other
// sidebox.io/ key is refused, so that a misspelt setting is not silently
// ignored.
func known(key string) bool {
	switch key {
	case AnnotationInject, AnnotationStatus, AnnotationImage, AnnotationNativeSidecar,
		AnnotationCommand, AnnotationDatabaseSecret, AnnotationDatabaseKey,
		AnnotationAMQPSecret, AnnotationAMQPKey, AnnotationOutboxTable,
		AnnotationInboxQueue, AnnotationInboxTable, AnnotationLogLevel,
		AnnotationLogFormat, AnnotationMigrate, AnnotationReadinessProbe:
		return true
	}
	return false
}

// parseSettings reads the settings of a pod that asked for injection.
func parseSettings(annotations map[string]string, cfg Config) (settings, error) {
	var unknown []string
	for k := range annotations {
		if strings.HasPrefix(k, AnnotationPrefix) && !known(k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return settings{}, &annotationError{unknown[0], "unknown sidebox annotation"}
	}
	get := func(key, def string) string {
		if v, ok := annotations[key]; ok {
			return strings.TrimSpace(v)
		}
		return def
	}
	getBool := func(key string, def bool) (bool, error) {
		v, ok := annotations[key]
		if !ok {
			return def, nil
		}
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return false, &annotationError{key, fmt.Sprintf("want \"true\" or \"false\", got %q", v)}
		}
		return b, nil
	}
	oneOf := func(key, v string, allowed []string) error {
		for _, a := range allowed {
			if v == a {
				return nil
			}
		}
		return &annotationError{key, fmt.Sprintf("want one of %s, got %q", strings.Join(allowed, ", "), v)}
	}

	s := settings{
		image:          get(AnnotationImage, cfg.Image),
		command:        get(AnnotationCommand, "run"),
		databaseSecret: get(AnnotationDatabaseSecret, ""),
		databaseKey:    get(AnnotationDatabaseKey, "url"),
		amqpSecret:     get(AnnotationAMQPSecret, ""),
		amqpKey:        get(AnnotationAMQPKey, "url"),
		outboxTable:    get(AnnotationOutboxTable, "outbox"),
		inboxQueue:     get(AnnotationInboxQueue, ""),
		inboxTable:     get(AnnotationInboxTable, "inbox"),
		logLevel:       get(AnnotationLogLevel, "info"),
		logFormat:      get(AnnotationLogFormat, "json"),
	}
	var err error
	if s.native, err = getBool(AnnotationNativeSidecar, cfg.Mode != ModeClassic); err != nil {
		return settings{}, err
	}
	if s.migrate, err = getBool(AnnotationMigrate, false); err != nil {
		return settings{}, err
	}
	if s.readiness, err = getBool(AnnotationReadinessProbe, true); err != nil {
		return settings{}, err
	}
	if err := checkImage(s.image); err != nil {
		return settings{}, &annotationError{AnnotationImage, err.Error()}
	}
	if err := oneOf(AnnotationCommand, s.command, commands()); err != nil {
		return settings{}, err
	}
	for _, sec := range []struct{ key, name, dataKey, keyAnnotation string }{
		{AnnotationDatabaseSecret, s.databaseSecret, s.databaseKey, AnnotationDatabaseKey},
		{AnnotationAMQPSecret, s.amqpSecret, s.amqpKey, AnnotationAMQPKey},
	} {
		if sec.name == "" {
			return settings{}, &annotationError{sec.key, "is required: the name of the Secret holding the URL"}
		}
		if len(sec.name) > 253 || !dnsSubdomain.MatchString(sec.name) {
			return settings{}, &annotationError{sec.key, fmt.Sprintf("%q is not a Secret name", sec.name)}
		}
		if len(sec.dataKey) > 253 || !secretKey.MatchString(sec.dataKey) {
			return settings{}, &annotationError{sec.keyAnnotation, fmt.Sprintf("%q is not a Secret key", sec.dataKey)}
		}
	}
	for _, t := range []struct{ key, value string }{
		{AnnotationOutboxTable, s.outboxTable},
		{AnnotationInboxTable, s.inboxTable},
	} {
		if _, err := pg.ParseTable(t.value); err != nil {
			return settings{}, &annotationError{t.key, err.Error()}
		}
	}
	if len(s.inboxQueue) > 255 {
		return settings{}, &annotationError{AnnotationInboxQueue, "longer than 255 bytes"}
	}
	if s.command == "inbox" && s.inboxQueue == "" {
		return settings{}, &annotationError{AnnotationInboxQueue, "is required with sidebox.io/command: inbox"}
	}
	if err := oneOf(AnnotationLogLevel, s.logLevel, logLevels()); err != nil {
		return settings{}, err
	}
	if err := oneOf(AnnotationLogFormat, s.logFormat, logFormats()); err != nil {
		return settings{}, err
	}
	return s, nil
}

func secretEnv(name, secret, key string) corev1.EnvVar {
	return corev1.EnvVar{
		Name: name,
		ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: secret},
			Key:                  key,
		}},
	}
}

func valueEnv(name, value string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, Value: value}
}

func logEnv(s settings) []corev1.EnvVar {
	return []corev1.EnvVar{
		valueEnv("SIDEBOX_LOG_LEVEL", s.logLevel),
		valueEnv("SIDEBOX_LOG_FORMAT", s.logFormat),
	}
}

// securityContext is the hardened context of every injected container: the
// image runs as the distroless nonroot user and writes nothing to disk.
func securityContext() *corev1.SecurityContext {
	uid := int64(65532)
	return &corev1.SecurityContext{
		RunAsNonRoot:             ptr(true),
		RunAsUser:                ptr(uid),
		RunAsGroup:               ptr(uid),
		ReadOnlyRootFilesystem:   ptr(true),
		AllowPrivilegeEscalation: ptr(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

func resources() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("50m"),
			corev1.ResourceMemory: resource.MustParse("64Mi"),
		},
		Limits: corev1.ResourceList{
			corev1.ResourceMemory: resource.MustParse("512Mi"),
		},
	}
}

func httpProbe(path string, period, failures int32) *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Path: path,
			Port: intstr.FromInt32(Port),
		}},
		PeriodSeconds:    period,
		TimeoutSeconds:   1,
		SuccessThreshold: 1,
		FailureThreshold: failures,
	}
}

// sidecar builds the sidebox container. The startup probe is on /healthz, not
// /readyz: a native sidecar's startup probe gates the start of the app, and
// the app must start (and write to its outbox) while RabbitMQ is down.
func sidecar(s settings) corev1.Container {
	env := []corev1.EnvVar{
		secretEnv("SIDEBOX_DATABASE_URL", s.databaseSecret, s.databaseKey),
		secretEnv("SIDEBOX_AMQP_URL", s.amqpSecret, s.amqpKey),
	}
	if s.command != "inbox" {
		env = append(env, valueEnv("SIDEBOX_OUTBOX_TABLE", s.outboxTable))
	}
	if s.inboxQueue != "" {
		env = append(env,
			valueEnv("SIDEBOX_INBOX_QUEUE", s.inboxQueue),
			valueEnv("SIDEBOX_INBOX_TABLE", s.inboxTable))
	}
	env = append(env, valueEnv("SIDEBOX_HTTP_ADDR", fmt.Sprintf(":%d", Port)))
	env = append(env, logEnv(s)...)

	c := corev1.Container{
		Name:            ContainerName,
		Image:           s.image,
		ImagePullPolicy: corev1.PullIfNotPresent,
		Args:            []string{s.command},
		Ports: []corev1.ContainerPort{{
			Name:          PortName,
			ContainerPort: Port,
			Protocol:      corev1.ProtocolTCP,
		}},
		Env:                      env,
		StartupProbe:             httpProbe("/healthz", 1, 30),
		LivenessProbe:            httpProbe("/healthz", 10, 3),
		Resources:                resources(),
		SecurityContext:          securityContext(),
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
	if s.readiness {
		c.ReadinessProbe = httpProbe("/readyz", 5, 3)
	}
	if s.native {
		c.RestartPolicy = ptr(corev1.ContainerRestartPolicyAlways)
	}
	return c
}

// migrateContainer builds the init container that runs `sidebox migrate up`.
func migrateContainer(s settings) corev1.Container {
	env := []corev1.EnvVar{
		secretEnv("SIDEBOX_DATABASE_URL", s.databaseSecret, s.databaseKey),
		valueEnv("SIDEBOX_OUTBOX_TABLE", s.outboxTable),
		valueEnv("SIDEBOX_INBOX_TABLE", s.inboxTable),
	}
	return corev1.Container{
		Name:                     MigrateContainerName,
		Image:                    s.image,
		ImagePullPolicy:          corev1.PullIfNotPresent,
		Args:                     []string{"migrate", "up"},
		Env:                      append(env, logEnv(s)...),
		Resources:                resources(),
		SecurityContext:          securityContext(),
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}

func ptr[T any](v T) *T { return &v }
