#!/usr/bin/env bash
# Server CPU per manifest hit, by digest and by tag, for one or more pullthrough binaries:
# the A/B behind a hot-path change. Each binary in turn is put in front of one Debian
# docker-registry (an OCI manifest bench/app:v1), warmed, then measured for ROUNDS rounds
# (default 3) of wrk -t2 -c64 for SECS seconds (default 5) per case; the CPU the server
# used (utime + stime from /proc) over the requests it served, and the rate, medians.
#
#   benches/hit-cpu.sh target/release/pullthrough /tmp/pullthrough-before ...
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: benches/hit-cpu.sh BIN..." >&2; exit 2; }
for tool in docker-registry wrk curl sha256sum; do
  command -v "$tool" >/dev/null || { echo "hit-cpu.sh: $tool is missing (scripts/install-deps --bench)" >&2; exit 2; }
done
ROUNDS=${ROUNDS:-3}; SECS=${SECS:-5}
W=$(mktemp -d /tmp/pullthrough-hitcpu.XXXXXX)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"' EXIT
BINS=(); for bin in "$@"; do BINS+=("$(realpath "$bin")"); done
cd "$(dirname "$0")/.."
. benches/lib.sh
start_registry "$W/up" "$(free_port)"; PIDS+=("$REGISTRY_PID")
head -c 1000 /dev/urandom > "$W/layer"
{ read -r _; read -r MAN; } < <(push_image "$W/layer" "$W")
median() { sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
for bin in "${BINS[@]}"; do
  PT=$(free_port); rm -rf "$W/cache"
  cat > "$W/pt.yaml" <<YML
pingora: { threads: 2, pid_file: $W/pt.pid, upgrade_sock: $W/pt.sock }
listen: ["127.0.0.1:$PT"]
default_route: local
routes: { local: { upstream: "http://127.0.0.1:$UP" } }
cache: { dir: $W/cache, tag_ttl: 1h }
YML
  RUST_LOG=warn "$bin" -c "$W/pt.yaml" >"$W/pt.log" 2>&1 & pid=$!
  wait_port "$PT"
  for u in "manifests/$MAN" manifests/v1; do
    for _ in 1 2; do curl -sf -H "Accept: $MT" -o /dev/null "http://127.0.0.1:$PT/v2/bench/app/$u"; done
  done
  : > "$W/rounds"
  for _ in $(seq 1 "$ROUNDS"); do
    for ref in "$MAN" v1; do
      case=digest; [ "$ref" = v1 ] && case=tag
      a=$(awk '{print $14+$15}' "/proc/$pid/stat")
      out=$(wrk -t2 -c64 -d"${SECS}s" -H "Accept: $MT" "http://127.0.0.1:$PT/v2/bench/app/manifests/$ref")
      b=$(awk '{print $14+$15}' "/proc/$pid/stat")
      n=$(echo "$out" | awk '/requests in/{print $1}')
      echo "$case $((n / SECS)) $(awk -v t=$((b - a)) -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.2f", t*1e6/hz/n}')" >> "$W/rounds"
    done
  done
  for case in digest tag; do
    rps=$(awk -v c=$case '$1==c{print $2}' "$W/rounds" | median)
    us=$(awk -v c=$case '$1==c{print $3}' "$W/rounds" | median)
    echo "$bin: manifest by $case: ${us} us CPU per hit, ${rps} req/s (medians of $ROUNDS)"
  done
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true # SIGINT: at once, no index save
done
