package chaos

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sidebox/sidebox/internal/testenv"
)

// 8. A three-node cluster of its own with a quorum queue. The relay gets the URLs
// node 1, 2, 3 and so connects to node 1; the inbox gets them as 2, 1, 3. Node 3
// (no client's) is killed mid-stream and started again, then node 1, the relay's.
func clusterNodesKilled(t *testing.T, ctx context.Context, srv *servers, sz size) row {
	cl := testenv.StartRabbitCluster(t, 3)
	urls := cl.URLs()
	r := newRig(t, ctx, srv, keys, withBroker(urls), withQueueArgs(amqp.Table{"x-queue-type": "quorum"}))
	inboxURLs := []string{urls[1], urls[0], urls[2]}
	r.env = append(r.env, "SIDEBOX_INBOX_PREFETCH=256")
	inboxEnv := r.processEnv("SIDEBOX_INBOX_QUEUE="+r.queue, "SIDEBOX_AMQP_URL="+strings.Join(inboxURLs, ","))
	in := testenv.StartSidebox(t, srv.bin, "inbox", inboxEnv)
	in.WaitReady(ctx, t)
	r.inboxes = append(r.inboxes, in)
	r.started = append(r.started, in)
	r.startProcessors(1, true)
	r.startRelay(true)
	r.note("relay on node 1 (%s): %s", urls[0], r.connectionsOn(cl, 0))

	n := sz.pick(2000, 6000)
	w := r.write(standard(n, 150))
	r.waitWritten(w, int64(n/3))
	cl.Nodes[2].Kill(t)
	r.crashed = true
	r.pause(2 * time.Second)
	cl.Nodes[2].Start(t)
	r.waitWritten(w, int64(2*n/3))
	cl.Nodes[0].Kill(t)
	r.pause(2 * time.Second)
	cl.Nodes[0].Start(t)
	w.wait()
	r.note("node 3 (no client's) killed and restarted, then node 1 (the relay's); quorum queue, relay given all three URLs")
	r.settle(settleTime(sz))
	if nacked, ok := r.relays[0].Counter("sidebox_outbox_nacked_total"); ok {
		r.note("the relay counted %d nacks (each a burnt attempt)", int(nacked))
	}
	return r.finish("8. 3-node cluster, quorum queue, nodes killed")
}

// connectionsOn describes the AMQP connections node i holds.
func (r *rig) connectionsOn(cl *testenv.RabbitCluster, i int) string {
	out := cl.Nodes[i].Ctl(r.t, "list_connections", "port", "peer_port", "-q")
	port := strconv.Itoa(portOf(cl.Nodes[i].Addr()))
	n := 0
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == port {
			n++
		}
	}
	return strconv.Itoa(n) + " connections"
}

func portOf(addr string) int {
	i := strings.LastIndexByte(addr, ':')
	p, _ := strconv.Atoi(addr[i+1:])
	return p
}
