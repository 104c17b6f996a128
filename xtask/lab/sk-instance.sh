#!/bin/bash
# sk-instance: the lab's `exec` runtime for one IMAP instance, run INSIDE a node (over SSH).
#   sk-instance start|stop|status INSTANCE
# start : the instance's dataset must be mounted; adds the service address to eth0, announces it
#         (gratuitous ARP), makes sure the node's Postfix and Dovecot run.
# stop  : removes the service address and kicks the IMAP sessions of the instance's domain.
# status: LSB: 0 running here, 3 stopped, 1 address present but a mail daemon is dead.
# drill-start MOUNTPOINT / drill-stop: the node's drill Dovecot (loopback only) serving a drill
#         clone mounted at MOUNTPOINT (the spec's drill block).
# Installed by `cargo xtask lab up` as /var/lib/sk-lab/bin/sk-instance; do not edit it there.
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C

usage() { echo "usage: sk-instance start|stop|status|drill-stop students|staff, or drill-start students|staff MOUNTPOINT" >&2; exit 2; }
[ $# -ge 2 ] || usage
verb=$1
inst=$2
# own_pf: the instance's own Postfix (multi-instance), empty when the node's serves it
case "$inst" in
  students) addr=10.77.0.21; domain=students.lab; own_pf= ;;
  staff)    addr=10.77.0.22; domain=staff.lab; own_pf=/etc/postfix/staff ;;
  *) echo "sk-instance: unknown instance '$inst' (the lab knows students, staff)" >&2; exit 2 ;;
esac
mountpoint_dir=/zdata/imap/$inst
dev=eth0

# grep reads all of ip's output (no -q): under pipefail, `grep -q` exiting at the first match can
# SIGPIPE `ip` and turn a present address into "stopped" at random.
has_addr() { ip -4 -o addr show dev "$dev" | grep -F " $addr/" >/dev/null; }
postfix_up() { postfix status >/dev/null 2>&1; }
own_up() { [ -z "$own_pf" ] || postfix -c "$own_pf" status >/dev/null 2>&1; }
own_start() {
  [ -n "$own_pf" ] || return 0
  own_up && return 0
  # the queue lives on the dataset; a pid file replicated from another node means nothing here
  rm -f "$mountpoint_dir/.postfix/pid/master.pid"
  mkdir -p "$mountpoint_dir/.postfix"
  postfix -c "$own_pf" check </dev/null >/dev/null 2>&1 || true
  postfix -c "$own_pf" start </dev/null >/dev/null 2>&1 || own_up ||
    { echo "sk-instance: the own Postfix of $inst did not start (see /var/log/postfix-staff.log)" >&2; exit 1; }
}
own_stop() {
  [ -n "$own_pf" ] || return 0
  own_up || return 0
  local p
  p=$(cat "$mountpoint_dir/.postfix/pid/master.pid" 2>/dev/null | tr -d ' ' || true)
  postfix -c "$own_pf" stop </dev/null >/dev/null 2>&1 || true
  # every process of it gone, so that the dataset can be unmounted
  if [ -n "$p" ]; then for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; fi
}
dovecot_up() {
  [ -s /run/dovecot/master.pid ] && kill -0 "$(cat /run/dovecot/master.pid)" 2>/dev/null
}
ensure_daemons() {
  # no stdio of ours for the daemons: the SSH session must end when we do
  postfix_up || postfix start </dev/null >/dev/null 2>&1 || postfix_up
  if ! dovecot_up; then dovecot </dev/null >/dev/null 2>&1; fi
}

drill_conf=/etc/dovecot/drill.conf
drill_pid() { cat /run/dovecot-drill/master.pid 2>/dev/null || true; }
drill_up() { local p; p=$(drill_pid); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

case "$verb" in
  drill-start)
    [ $# -eq 3 ] || usage
    if ! mountpoint -q "$3"; then
      echo "sk-instance: the drill clone of $inst is not mounted at $3; refusing to start" >&2
      exit 1
    fi
    # the listener of a drill copy stopped just before may still be closing: retry a while
    for _ in $(seq 1 30); do
      drill_up && break
      dovecot -c "$drill_conf" </dev/null >/dev/null 2>&1 || true
      for _ in $(seq 1 10); do drill_up && break; sleep 0.1; done
    done
    drill_up || { echo "sk-instance: the drill dovecot did not start (see /var/log/dovecot-drill.log)" >&2; exit 1; }
    echo "sk-instance: drill copy of $inst serving on 127.0.0.1:10143 on $(hostname)"
    ;;
  drill-stop)
    # every drill process gone, so that the clone can be unmounted
    p=$(drill_pid)
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
      doveadm -c "$drill_conf" stop >/dev/null 2>&1 || kill "$p" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$p" 2>/dev/null || true
    fi
    # and its listeners closed, so that the next drill copy can bind them
    for _ in $(seq 1 50); do
      ss -ltnH '( sport = :10143 or sport = :10024 )' 2>/dev/null | grep . >/dev/null || break
      sleep 0.1
    done
    echo "sk-instance: drill copy of $inst stopped on $(hostname)"
    ;;
  start)
    if ! mountpoint -q "$mountpoint_dir"; then
      echo "sk-instance: dataset of $inst is not mounted at $mountpoint_dir on $(hostname); refusing to start" >&2
      exit 1
    fi
    ensure_daemons
    own_start
    if ! has_addr; then ip addr add "$addr/24" dev "$dev"; fi
    # Tell the segment the address moved (the old holder's MAC may be cached); in the background
    # (arping waits for its deadline) and detached from our stdio so that SSH returns at once.
    (setsid arping -q -U -c 2 -w 2 -I "$dev" "$addr" </dev/null >/dev/null 2>&1 &)
    ip neigh flush dev "$dev" >/dev/null 2>&1 || true
    echo "sk-instance: $inst started on $(hostname) ($addr)"
    ;;
  stop)
    if has_addr; then ip addr del "$addr/24" dev "$dev"; fi
    own_stop
    if dovecot_up; then doveadm kick "*@$domain" >/dev/null 2>&1 || true; fi
    echo "sk-instance: $inst stopped on $(hostname)"
    ;;
  status)
    if ! has_addr; then
      if [ -n "$own_pf" ] && own_up; then echo "$inst: address absent but its own Postfix runs"; exit 1; fi
      echo "$inst: stopped"; exit 3
    fi
    if postfix_up && dovecot_up && own_up; then echo "$inst: running ($addr)"; exit 0; fi
    echo "$inst: address $addr present but postfix or dovecot is dead"; exit 1
    ;;
  *) usage ;;
esac
