// Command sidebox is the transactional outbox/inbox sidecar; see `sidebox help`.
package main

import (
	"os"

	"github.com/sidebox/sidebox/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
