// Package inject implements `sidebox inject`, a mutating admission webhook
// (admission.k8s.io/v1, JSONPatch) that adds the sidebox sidecar to pods
// annotated sidebox.io/inject: "true".
//
// The injected container is the one the library chart (charts/sidebox)
// renders: named "sidebox", port 9719 named "metrics", startup and liveness
// probes on /healthz, a readiness probe on /readyz, non-root with a read-only
// root filesystem, no capabilities and the runtime's default seccomp profile.
// By default it is a native sidecar (an init container with restartPolicy
// Always, Kubernetes >= 1.29): it starts, and passes its startup probe, before
// the app's containers start, it stops after they stopped, and Jobs complete.
// With sidebox.io/native-sidecar: "false" (or SIDEBOX_INJECT_MODE=classic) it
// is a regular container next to the app.
//
// The startup probe is on /healthz (the process serves), not /readyz
// (database and broker reachable): the app must be able to start and write
// its outbox while RabbitMQ is down; that is the point of an outbox.
//
// Settings come from the pod's annotations (see the Annotation constants):
// database-secret and amqp-secret are required, every other has the same
// default as the library chart. A pod that already has the sidecar (a
// container named "sidebox" or "sidebox-migrate", or the annotation
// sidebox.io/status: injected) is not patched again, and pods that did not
// opt in pass untouched.
package inject
