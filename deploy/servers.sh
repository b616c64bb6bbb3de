#!/usr/bin/env bash
# servers.sh — the PostgreSQL and RabbitMQ servers that sidebox's tests and demo use.
#
#   eval "$(deploy/servers.sh up)"   find or start both; print their export lines
#   deploy/servers.sh env            the same, but never starts or installs anything
#   deploy/servers.sh down           stop the private servers that `up` started
#   deploy/servers.sh tools CMD...   install the Debian packages of these commands where
#                                    missing (podman, runc for `make image`)
#
# Each server is, in this order:
#   1. the one in SIDEBOX_TEST_DATABASE_URL / SIDEBOX_TEST_AMQP_URL when set;
#   2. the one answering on the standard port, 127.0.0.1:5432 / 127.0.0.1:5672;
#   3. a private one on 127.0.0.1:55432 / 127.0.0.1:55672 with its data in .sidebox/
#      at the repository root, started by `up` (which first installs the Debian packages
#      postgresql and rabbitmq-server with apt-get when they are missing).
# `up` also installs Debian's pgbouncer when it is missing: the tests start private
# PgBouncers of their own in front of the test PostgreSQL (its system service is not
# started, nor used).
# stdout carries only the export lines; everything else goes to stderr.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
STATE=$ROOT/.sidebox

SHARED_PG_URL='postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable'
SHARED_AMQP_URL='amqp://guest:guest@127.0.0.1:5672/'
PG_PORT=55432
AMQP_PORT=55672
DIST_PORT=55679 # Erlang distribution port of the private RabbitMQ node
RABBIT_NODE=sidebox-priv@localhost
PRIVATE_PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres?sslmode=disable"
PRIVATE_AMQP_URL="amqp://guest:guest@127.0.0.1:$AMQP_PORT/"

log() { printf 'servers.sh: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

usage() {
	sed -n '2,17s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
}

# redact hides passwords in URLs and key=value DSNs.
redact() {
	sed -E -e 's#(://[^:/@]*):[^@]*@#\1:xxxxx@#' -e 's#([A-Za-z]*password=)[^ &]*#\1xxxxx#Ig' <<<"$1"
}

# export_line prints an eval-safe `export NAME='value'`.
export_line() {
	local q="'\\''"
	printf "export %s='%s'\n" "$1" "${2//\'/$q}"
}

is_root() { [[ $(id -u) -eq 0 ]]; }

# pg_answers HOST PORT: a PostgreSQL server answers an SSLRequest with S or N.
pg_answers() {
	local reply
	# shellcheck disable=SC2016 # $0 and $1 belong to the inner shell
	reply=$(timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1" &&
		printf "\x00\x00\x00\x08\x04\xd2\x16\x2f" >&3 && head -c 1 <&3' "$1" "$2" 2>/dev/null) || return 1
	[[ $reply == S || $reply == N ]]
}

# amqp_answers HOST PORT: an AMQP 0-9-1 broker answers the protocol header with a
# method frame (Connection.Start), whose first byte is 1.
amqp_answers() {
	local reply
	# shellcheck disable=SC2016 # $0 and $1 belong to the inner shell
	reply=$(timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1" &&
		printf "AMQP\x00\x00\x09\x01" >&3 && head -c 1 <&3 | od -An -tx1' "$1" "$2" 2>/dev/null) || return 1
	[[ ${reply// /} == 01 ]]
}

# ---- binaries and packages -------------------------------------------------------

# pg_bin prints the newest directory holding initdb and pg_ctl.
pg_bin() {
	local dirs=() d
	mapfile -t dirs < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k5,5 -rn)
	for d in "${dirs[@]}"; do
		if [[ -x $d/initdb && -x $d/pg_ctl ]]; then
			printf '%s\n' "$d"
			return 0
		fi
	done
	d=$(command -v initdb 2>/dev/null) || return 1
	d=$(dirname "$d")
	[[ -x $d/pg_ctl ]] && printf '%s\n' "$d"
}

# rabbit_server prints the rabbitmq-server script that runs the broker in the
# foreground as the calling user (Debian's /usr/sbin one is a wrapper that switches
# to the rabbitmq user; the script it wraps is in /usr/lib/rabbitmq/bin).
rabbit_server() {
	local c target
	for c in /usr/lib/rabbitmq/bin/rabbitmq-server "$(command -v rabbitmq-server 2>/dev/null || true)"; do
		[[ -n $c && -e $c ]] || continue
		target=$(readlink -f "$c")
		[[ $(basename "$target") != rabbitmq-script-wrapper && -x $target ]] || continue
		printf '%s\n' "$c"
		return 0
	done
	return 1
}

# pgbouncer_bin prints the pgbouncer binary the tests run.
pgbouncer_bin() {
	command -v pgbouncer 2>/dev/null && return 0
	[[ -x /usr/sbin/pgbouncer ]] && printf '%s\n' /usr/sbin/pgbouncer
}

# install_packages PACKAGE... installs Debian packages without starting their
# services (a policy-rc.d denies it for the time of the install; we start our own).
install_packages() {
	local sudo=()
	if ! is_root; then
		if ! command -v sudo >/dev/null || ! sudo -n true 2>/dev/null; then
			die "missing $*: install them (apt-get install $*) or run as root"
		fi
		sudo=(sudo -n)
	fi
	command -v apt-get >/dev/null || die "missing $*, and no apt-get to install them with"
	local policy=/usr/sbin/policy-rc.d added=''
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
		"${sudo[@]}" chmod 755 "$policy"
		added=1
	fi
	log "installing $* with apt-get (takes a minute or two)"
	local rc=0
	{
		"${sudo[@]}" apt-get update -qq &&
			"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
	} >&2 || rc=$?
	if [[ -n $added ]]; then "${sudo[@]}" rm -f "$policy"; fi
	[[ $rc -eq 0 ]] || die "apt-get install $* failed (exit $rc)"
}

# ---- private PostgreSQL ----------------------------------------------------------

# pg_home prints the private cluster's directory: .sidebox/postgres, or when the
# postgres user cannot reach the repository (root running it from a private home), a
# directory under /var/tmp named after the repository path.
pg_home() {
	if is_root && ! runuser -u postgres -- test -x "$ROOT" 2>/dev/null; then
		printf '/var/tmp/sidebox-%s/postgres\n' "$(cksum <<<"$ROOT" | cut -d' ' -f1)"
	else
		printf '%s\n' "$STATE/postgres"
	fi
}

as_postgres() {
	if is_root; then runuser -u postgres -- "$@"; else "$@"; fi
}

# private_pg_pid prints the pid of our cluster's postmaster when it is alive.
private_pg_pid() {
	local data pid
	data="$(pg_home)/data"
	[[ -f $data/postmaster.pid ]] || return 1
	pid=$(head -n 1 "$data/postmaster.pid")
	# The postmaster runs in its data directory; a reused pid does not.
	[[ -n $pid && $(readlink "/proc/$pid/cwd" 2>/dev/null) == "$data" ]] || return 1
	printf '%s\n' "$pid"
}

private_pg_running() {
	private_pg_pid >/dev/null && pg_answers 127.0.0.1 "$PG_PORT"
}

start_pg() {
	local bin home data
	bin=$(pg_bin) || die "PostgreSQL binaries not found after install"
	home=$(pg_home)
	data=$home/data
	if pg_answers 127.0.0.1 "$PG_PORT" && ! private_pg_running; then
		die "127.0.0.1:$PG_PORT is taken by a server this script did not start; set SIDEBOX_TEST_DATABASE_URL"
	fi
	mkdir -p "$home"
	if is_root; then chown postgres:postgres "$home"; fi
	chmod 700 "$home"
	if [[ ! -f $data/PG_VERSION ]]; then
		log "creating a private PostgreSQL cluster in $home"
		(cd "$home" && as_postgres "$bin/initdb" -D "$data" -U postgres --auth=trust \
			--encoding=UTF8 --locale=C --no-sync >/dev/null)
		cat >>"$data/postgresql.conf" <<-EOF

			# sidebox: private test server (deploy/servers.sh)
			listen_addresses = '127.0.0.1'
			port = $PG_PORT
			unix_socket_directories = ''
			max_connections = 200
			fsync = off
			full_page_writes = off
		EOF
	fi
	log "starting the private PostgreSQL on 127.0.0.1:$PG_PORT"
	if ! (cd "$home" && as_postgres "$bin/pg_ctl" -D "$data" -l "$home/postgres.log" -w -t 120 start >/dev/null); then
		tail -n 20 "$home/postgres.log" >&2 || true
		die "the private PostgreSQL did not start (log: $home/postgres.log)"
	fi
}

stop_pg() {
	local home bin pid
	home=$(pg_home)
	pid=$(private_pg_pid) || return 0
	bin=$(pg_bin) || die "PostgreSQL binaries not found"
	log "stopping the private PostgreSQL (pid $pid)"
	(cd "$home" && as_postgres "$bin/pg_ctl" -D "$home/data" -m fast -w -t 60 stop >/dev/null)
}

# ---- private RabbitMQ ------------------------------------------------------------

RABBIT_HOME=$STATE/rabbitmq
RABBIT_PIDFILE=$RABBIT_HOME/server.pid

# rabbit_pid prints the pid of our node when it is alive.
rabbit_pid() {
	local pid
	[[ -f $RABBIT_PIDFILE ]] || return 1
	pid=$(<"$RABBIT_PIDFILE")
	# The node runs with its directory as working directory; a reused pid does not.
	[[ -n $pid && $(readlink "/proc/$pid/cwd" 2>/dev/null) == "$RABBIT_HOME" ]] || return 1
	printf '%s\n' "$pid"
}

private_rabbit_running() {
	rabbit_pid >/dev/null && amqp_answers 127.0.0.1 "$AMQP_PORT"
}

# launch_rabbit starts the node in the background, detached from this shell's session.
# It runs as the calling user (root included), with HOME in its directory for the
# Erlang cookie and nothing read from /etc/rabbitmq.
launch_rabbit() {
	local server
	server=$(rabbit_server) || die "rabbitmq-server not found after install"
	if amqp_answers 127.0.0.1 "$AMQP_PORT"; then
		die "127.0.0.1:$AMQP_PORT is taken by a broker this script did not start; set SIDEBOX_TEST_AMQP_URL"
	fi
	mkdir -p "$RABBIT_HOME"
	: >"$RABBIT_HOME/rabbitmq-env.conf"
	printf '[].\n' >"$RABBIT_HOME/enabled_plugins"
	cat >"$RABBIT_HOME/rabbitmq.conf" <<-EOF
		listeners.tcp.1 = 127.0.0.1:$AMQP_PORT
		log.console = true
		log.console.level = info
		log.file = false
	EOF
	log "starting the private RabbitMQ on 127.0.0.1:$AMQP_PORT (node $RABBIT_NODE)"
	rm -f "$RABBIT_PIDFILE"
	(
		cd "$RABBIT_HOME"
		while IFS= read -r name; do unset "$name"; done < <(compgen -e | grep -E '^(RABBITMQ_|ERL_)|^NOTIFY_SOCKET$' || true)
		export HOME=$RABBIT_HOME \
			RABBITMQ_NODENAME=$RABBIT_NODE \
			RABBITMQ_DIST_PORT=$DIST_PORT \
			RABBITMQ_CONF_ENV_FILE=$RABBIT_HOME/rabbitmq-env.conf \
			RABBITMQ_CONFIG_FILE=$RABBIT_HOME/rabbitmq.conf \
			RABBITMQ_ADVANCED_CONFIG_FILE=$RABBIT_HOME/advanced.config \
			RABBITMQ_ENABLED_PLUGINS_FILE=$RABBIT_HOME/enabled_plugins \
			RABBITMQ_PLUGINS_EXPAND_DIR=$RABBIT_HOME/plugins-expand \
			RABBITMQ_MNESIA_BASE=$RABBIT_HOME/mnesia \
			RABBITMQ_LOG_BASE=$RABBIT_HOME/log \
			RABBITMQ_PID_FILE=$RABBIT_HOME/rabbitmq.pid \
			RABBITMQ_ALLOW_INPUT=true \
			RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-noinput -kernel inet_dist_use_interface {127,0,0,1}' \
			ERL_EPMD_ADDRESS=127.0.0.1
		# A new session, so that nothing sent to this shell's terminal or process group
		# reaches the node. The shell records its pid and execs the script, which, with
		# input allowed, execs the Erlang VM: the pid is the VM's. -noinput keeps the VM
		# from reading stdin.
		# shellcheck disable=SC2016 # $$ and $1 belong to the inner shell
		exec setsid -f bash -c 'printf "%s\n" "$$" >"$0" && exec "$1"' "$RABBIT_PIDFILE" "$server" \
			>>"$RABBIT_HOME/rabbitmq.log" 2>&1 </dev/null
	)
	local i
	for ((i = 0; i < 100; i++)); do
		[[ -s $RABBIT_PIDFILE ]] && return 0
		sleep 0.05
	done
	die "the private RabbitMQ did not start (log: $RABBIT_HOME/rabbitmq.log)"
}

# wait_rabbit waits until the node launched by launch_rabbit accepts AMQP.
wait_rabbit() {
	local deadline=$((SECONDS + 180))
	until amqp_answers 127.0.0.1 "$AMQP_PORT"; do
		if ! rabbit_pid >/dev/null; then
			tail -n 30 "$RABBIT_HOME/rabbitmq.log" >&2 || true
			die "the private RabbitMQ exited during start-up (log: $RABBIT_HOME/rabbitmq.log)"
		fi
		((SECONDS < deadline)) || die "the private RabbitMQ did not accept AMQP within 180 s (log: $RABBIT_HOME/rabbitmq.log)"
		sleep 0.2
	done
	log "the private RabbitMQ is ready"
}

stop_rabbit() {
	local pid i
	pid=$(rabbit_pid) || {
		rm -f "$RABBIT_PIDFILE"
		return 0
	}
	log "stopping the private RabbitMQ (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 300; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "the private RabbitMQ did not stop in 30 s; killing it"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$RABBIT_PIDFILE"
}

# ---- commands --------------------------------------------------------------------

PG_URL=
AMQP_URL=

# resolve MODE sets PG_URL and AMQP_URL; MODE "up" may install and start servers.
resolve() {
	local mode=$1 need_pg='' need_rabbit='' missing=()
	if [[ -n ${SIDEBOX_TEST_DATABASE_URL:-} ]]; then
		PG_URL=$SIDEBOX_TEST_DATABASE_URL
		log "PostgreSQL: $(redact "$PG_URL") (from SIDEBOX_TEST_DATABASE_URL)"
	elif pg_answers 127.0.0.1 5432; then
		PG_URL=$SHARED_PG_URL
		log "PostgreSQL: the server on 127.0.0.1:5432"
	elif private_pg_running; then
		PG_URL=$PRIVATE_PG_URL
		log "PostgreSQL: the private server on 127.0.0.1:$PG_PORT"
	else
		need_pg=1
	fi
	if [[ -n ${SIDEBOX_TEST_AMQP_URL:-} ]]; then
		AMQP_URL=$SIDEBOX_TEST_AMQP_URL
		log "RabbitMQ: $(redact "$AMQP_URL") (from SIDEBOX_TEST_AMQP_URL)"
	elif amqp_answers 127.0.0.1 5672; then
		AMQP_URL=$SHARED_AMQP_URL
		log "RabbitMQ: the broker on 127.0.0.1:5672"
	elif private_rabbit_running; then
		AMQP_URL=$PRIVATE_AMQP_URL
		log "RabbitMQ: the private broker on 127.0.0.1:$AMQP_PORT"
	else
		need_rabbit=1
	fi

	if [[ $mode != up ]]; then
		[[ -z $need_pg ]] || die "no PostgreSQL: nothing answers on 127.0.0.1:5432 or :$PG_PORT; run 'deploy/servers.sh up' or set SIDEBOX_TEST_DATABASE_URL"
		[[ -z $need_rabbit ]] || die "no RabbitMQ: nothing answers on 127.0.0.1:5672 or :$AMQP_PORT; run 'deploy/servers.sh up' or set SIDEBOX_TEST_AMQP_URL"
		return 0
	fi

	if [[ -n $need_pg ]] && ! pg_bin >/dev/null; then missing+=(postgresql); fi
	if [[ -n $need_rabbit ]] && ! rabbit_server >/dev/null; then missing+=(rabbitmq-server); fi
	if ! pgbouncer_bin >/dev/null; then missing+=(pgbouncer); fi
	if ((${#missing[@]})); then install_packages "${missing[@]}"; fi

	# RabbitMQ takes the longest: launch it first, start PostgreSQL meanwhile.
	if [[ -n $need_rabbit ]]; then
		if rabbit_pid >/dev/null; then
			log "the private RabbitMQ is still starting"
		else
			launch_rabbit
		fi
	fi
	if [[ -n $need_pg ]]; then
		start_pg
		PG_URL=$PRIVATE_PG_URL
	fi
	if [[ -n $need_rabbit ]]; then
		wait_rabbit
		AMQP_URL=$PRIVATE_AMQP_URL
	fi
}

main() {
	case ${1:-} in
	up | env)
		resolve "$1"
		export_line SIDEBOX_TEST_DATABASE_URL "$PG_URL"
		export_line SIDEBOX_TEST_AMQP_URL "$AMQP_URL"
		;;
	down)
		stop_rabbit
		stop_pg
		;;
	tools)
		shift
		local missing=()
		for c in "$@"; do
			command -v "$c" >/dev/null || missing+=("$c")
		done
		if ((${#missing[@]})); then install_packages "${missing[@]}"; fi
		;;
	-h | --help | help)
		usage
		;;
	*)
		usage
		exit 2
		;;
	esac
}

main "$@"
