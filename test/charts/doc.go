// Package charts holds the tests of the Helm charts under charts/: every chart
// is linted and rendered with Helm's own Go packages, and every rendered object
// is decoded strictly into its Kubernetes API type.
//
// It is a separate Go module so that Helm's dependency tree stays out of the
// sidebox module. Run it from the repository root with
//
//	cd test/charts && go test ./...
package charts
