package inject

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"go.uber.org/zap"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Paths served by NewHandler.
const (
	PathMutate  = "/mutate"
	PathHealthz = "/healthz"
)

// maxReviewBytes bounds a request body. The API server limits objects to
// about 3 MiB; a review carries at most the object twice (object, oldObject).
const maxReviewBytes = 8 << 20

// NewHandler returns the webhook's HTTP handler:
//
//   - POST /mutate takes an admission.k8s.io/v1 AdmissionReview and answers
//     with one whose response carries the request's UID and, for a pod that
//     asks for the sidecar and does not have it yet, a JSONPatch adding it;
//   - GET /healthz answers 200 for the probes of the webhook's own pods.
//
// A body that is not an AdmissionReview v1 with a request (not JSON, wrong
// apiVersion or kind, no UID) gets HTTP 400, a wrong Content-Type 415, and a
// body over 8 MiB 413: without a UID there is no valid review to answer, and
// the API server applies the webhook's failurePolicy. A well-formed review of
// an annotated pod whose annotations are invalid is answered with
// allowed: false and a message naming the annotation, so that the mistake
// shows in the events of the pod's controller rather than as a pod without
// its sidecar.
//
// cfg must be valid (Config.Validate); only Image and Mode are used.
func NewHandler(cfg Config, log *zap.Logger) http.Handler {
	h := &handler{cfg: cfg, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PathMutate, h.mutate)
	mux.HandleFunc("GET "+PathHealthz, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	return mux
}

type handler struct {
	cfg Config
	log *zap.Logger
}

func (h *handler) mutate(w http.ResponseWriter, r *http.Request) {
	mediaType, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mediaType != "application/json" {
		h.fail(w, http.StatusUnsupportedMediaType, fmt.Sprintf("content type %q: want application/json", r.Header.Get("Content-Type")))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxReviewBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			h.fail(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body over %d bytes", tooLarge.Limit))
			return
		}
		h.fail(w, http.StatusBadRequest, fmt.Sprintf("read request: %v", err))
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil {
		h.fail(w, http.StatusBadRequest, fmt.Sprintf("decode AdmissionReview: %v", err))
		return
	}
	if gv := admissionv1.SchemeGroupVersion.String(); review.APIVersion != gv || review.Kind != "AdmissionReview" {
		h.fail(w, http.StatusBadRequest, fmt.Sprintf("got %s %s, want %s AdmissionReview", review.APIVersion, review.Kind, gv))
		return
	}
	if review.Request == nil || review.Request.UID == "" {
		h.fail(w, http.StatusBadRequest, "AdmissionReview without a request UID")
		return
	}

	resp := h.review(review.Request)
	resp.UID = review.Request.UID
	out, err := json.Marshal(admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: resp})
	if err != nil {
		h.fail(w, http.StatusInternalServerError, fmt.Sprintf("encode AdmissionReview: %v", err))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if _, err := w.Write(out); err != nil {
		h.log.Warn("write admission response", zap.Error(err))
	}
}

// fail answers a request that is not a usable AdmissionReview.
func (h *handler) fail(w http.ResponseWriter, code int, msg string) {
	h.log.Warn("bad admission request", zap.Int("status", code), zap.String("problem", msg))
	http.Error(w, msg, code)
}

// review decides on one admission request.
func (h *handler) review(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	allow := &admissionv1.AdmissionResponse{Allowed: true}
	if req.Resource.Group != "" || req.Resource.Resource != "pods" || req.SubResource != "" ||
		req.Operation != admissionv1.Create {
		return allow
	}
	if len(req.Object.Raw) == 0 {
		return deny(http.StatusBadRequest, metav1.StatusReasonBadRequest, "sidebox: the request carries no pod")
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return deny(http.StatusBadRequest, metav1.StatusReasonBadRequest, fmt.Sprintf("sidebox: decode pod: %v", err))
	}
	log := h.log.With(zap.String("namespace", req.Namespace), zap.String("pod", podName(&pod)), zap.String("uid", string(req.UID)))

	inject, err := wantsInjection(pod.Annotations)
	if err != nil {
		log.Info("pod refused", zap.Error(err))
		return deny(http.StatusUnprocessableEntity, metav1.StatusReasonInvalid, "sidebox: "+err.Error())
	}
	if !inject {
		return allow
	}
	if injected(&pod) {
		log.Debug("sidecar already present")
		return allow
	}
	s, err := parseSettings(pod.Annotations, h.cfg)
	if err != nil {
		log.Info("pod refused", zap.Error(err))
		return deny(http.StatusUnprocessableEntity, metav1.StatusReasonInvalid, "sidebox: "+err.Error())
	}
	patch, err := json.Marshal(podPatch(&pod, s))
	if err != nil {
		return deny(http.StatusInternalServerError, metav1.StatusReasonInternalError, fmt.Sprintf("sidebox: encode patch: %v", err))
	}
	mode := ModeClassic
	if s.native {
		mode = ModeNative
	}
	log.Info("sidecar injected", zap.String("mode", mode), zap.String("image", s.image))
	pt := admissionv1.PatchTypeJSONPatch
	return &admissionv1.AdmissionResponse{Allowed: true, Patch: patch, PatchType: &pt}
}

func deny(code int32, reason metav1.StatusReason, msg string) *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{
		Allowed: false,
		Result: &metav1.Status{
			Status:  metav1.StatusFailure,
			Code:    code,
			Reason:  reason,
			Message: msg,
		},
	}
}

// podName is the pod's name, or its generateName prefix for pods created by
// controllers (the name is assigned after admission).
func podName(pod *corev1.Pod) string {
	if pod.Name != "" {
		return pod.Name
	}
	if pod.GenerateName != "" {
		return pod.GenerateName + "*"
	}
	return ""
}

// injected reports whether the pod already has the sidecar: the webhook's
// status annotation, or a container of the sidecar's names (added by the
// library chart, by hand, or by an earlier pass of this webhook).
func injected(pod *corev1.Pod) bool {
	if pod.Annotations[AnnotationStatus] == StatusInjected {
		return true
	}
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range list {
			if c.Name == ContainerName || c.Name == MigrateContainerName {
				return true
			}
		}
	}
	return false
}

// patchOp is one RFC 6902 JSON Patch operation.
type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

// podPatch adds the sidecar, and the migration init container when asked for,
// and marks the pod as injected. Init containers go after the pod's own, so
// that the pod's own init steps (migrations of its schema, say) finish before
// the relay starts; the native sidecar is then started, and its startup probe
// passed, before the app's containers.
func podPatch(pod *corev1.Pod, s settings) []patchOp {
	var ops []patchOp
	if pod.Annotations == nil {
		ops = append(ops, patchOp{Op: "add", Path: "/metadata/annotations", Value: map[string]string{AnnotationStatus: StatusInjected}})
	} else {
		ops = append(ops, patchOp{Op: "add", Path: "/metadata/annotations/" + pointerEscaper.Replace(AnnotationStatus), Value: StatusInjected})
	}

	var inits []corev1.Container
	if s.migrate {
		inits = append(inits, migrateContainer(s))
	}
	c := sidecar(s)
	if s.native {
		inits = append(inits, c)
	} else {
		ops = append(ops, patchOp{Op: "add", Path: "/spec/containers/-", Value: c})
	}
	switch {
	case len(inits) == 0:
	case len(pod.Spec.InitContainers) == 0:
		ops = append(ops, patchOp{Op: "add", Path: "/spec/initContainers", Value: inits})
	default:
		for _, ic := range inits {
			ops = append(ops, patchOp{Op: "add", Path: "/spec/initContainers/-", Value: ic})
		}
	}
	return ops
}

// pointerEscaper escapes a map key for a JSON Pointer (RFC 6901).
var pointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")
