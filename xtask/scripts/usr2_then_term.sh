#!/usr/bin/env bash
# Sends SIGUSR2 then SIGTERM back to back to a fresh gracedemo RUNS times (default 20) and
# counts the runs in which a process is still serving 1.5 s later (the TERM taken as a stop of
# the old process's drain only, after its successor took over). By default one process sends
# both, microseconds apart (the server's own handling); SHELL_KILLS=1 sends them as
# `kill -USR2 $P; kill -TERM $P` from this shell, which a busy machine may hold up between the
# two. A measurement, not a test: the outcome is a race.
#   xtask/scripts/usr2_then_term.sh [RUNS] [gracedemo flags...]   (G=binary, PORT=base port)
set -u
G=${G:-target/release/gracedemo}
RUNS=${1:-20}; shift || true
FLAGS=${*:---standby}
PORT=${PORT:-23721}
A="-a0 127.0.0.1:$PORT -a1 127.0.0.1:$((PORT + 1)) -a2 127.0.0.1:$((PORT + 2))"
# The processes of this run: ours alone, by a variable only they carry (never by name).
serving() { grep -lz "^USR2_TERM_RUN=$1\$" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3; }
answers() { curl -s -m1 -o /dev/null "http://127.0.0.1:$PORT/sleep/?duration=0s"; }
alive=0
for run in $(seq "$RUNS"); do
  # shellcheck disable=SC2086
  mark="$$-$run"
  USR2_TERM_RUN=$mark "$G" $A $FLAGS 2>/dev/null & P=$!
  for _ in $(seq 50); do answers && break; sleep 0.1; done
  sleep 0.3 # the standby starts after the first generation serves
  if [ -n "${SHELL_KILLS:-}" ]; then
    kill -USR2 $P; kill -TERM $P
  else
    python3 -c 'import os, signal, sys; p = int(sys.argv[1]); os.kill(p, signal.SIGUSR2); os.kill(p, signal.SIGTERM)' $P
  fi
  sleep 1.5
  left=$(serving "$mark")
  if [ -n "$left" ]; then
    alive=$((alive + 1))
    for q in $left; do kill -TERM "$q" 2>/dev/null; done
    sleep 1
  fi
  wait $P 2>/dev/null
done
echo "still serving after USR2+TERM in $alive of $RUNS runs ($FLAGS)"
