#!/usr/bin/env bash
# Load benchmark: pullthrough side by side with nginx (proxy_cache) and distribution's proxy
# mode, all on loopback in front of one Debian docker-registry, measured the same way with
# wrk in the same run. Writes BENCHMARKS.md.
#
#   benches/load.sh            full run (every case in interleaved rounds, medians and
#                              spreads: (a), (b) 5 rounds of 6 s each, the 4-connection cases
#                              twice a round; (c), (d) 3 rounds; 256 MiB, 100 MiB and 1 GiB
#                              blobs; about 35 minutes)
#                              -> BENCHMARKS.md
#   benches/load.sh --smoke    2 s per case, blobs of a few MiB -> target/BENCHMARKS-smoke.md
#                              (CI runs this so the harness cannot rot; it asserts no timings)
#   PACE=50m benches/load.sh   another upstream pace for case (c)
#
# Cases: (a) cache-hit GET of the big blob, 4 connections: bytes/s;
#     and the server's CPU time per GB served;
# (b) cache-hit GET of a manifest by digest and by tag, 64 connections (requests/s and p99) and
#     4 connections (requests/s);
# (c) 50 clients at once on one uncached 100 MiB blob, upstream paced to PACE bytes/s: upstream
#     fetches, total time and time to first byte, against one client alone on another cold blob;
# (d) peak RSS of each server while 50 clients pull one uncached 1 GiB blob (unpaced);
# (e) three nodes: 50 clients spread over them on one cold 100 MiB blob (paced as (c)), for a
#     pullthrough cluster, three independent pullthrough nodes and three distribution proxies
#     (each with its own cache, as distribution's docs describe a cache cluster): upstream
#     fetches, total time, time to first byte; and the latency a peer hop adds to a hit;
# (f) a cache of 1,000,000 entries (benches/bigcache.rs; 20,000 in smoke mode): start-up,
#     memory per entry, hit latency, an upgrade under load;
# and the loopback ceiling (iperf3). Upstream fetches are counted in the access log of an nginx
# front (benches/upstream.conf.in) that stands between every mirror and docker-registry.
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
if [ $SMOKE = 1 ]; then
  BIG_MIB=8; COLD_MIB=4; HUGE_MIB=16; SECS=2; ROUNDS=1; HIT_ROUNDS=1; FOUR_RUNS=1; BIG_ENTRIES=20000; OUT=target/BENCHMARKS-smoke.md
else
  # (a), (b): 5 rounds, the 4-connection cases twice in each, as their rates depend on how
  # the connections fall on the two cores shared with the clients (see BENCHMARKS.md).
  BIG_MIB=256; COLD_MIB=100; HUGE_MIB=1024; SECS=6; ROUNDS=3; HIT_ROUNDS=5; FOUR_RUNS=2; BIG_ENTRIES=1000000; OUT=BENCHMARKS.md
fi
CLIENTS=50
SINGLES=3 # (c): one client alone on this many cold blobs per round (its first byte varies most)
PACE=${PACE:-20m} # bytes/s per upstream connection in case (c), in nginx limit_rate syntax (20m = 20 MB/s)

for tool in docker-registry nginx wrk iperf3 curl sha256sum; do
  command -v "$tool" >/dev/null || { echo "load.sh: $tool is missing (apt-get install docker-registry nginx-light wrk iperf3 curl)" >&2; exit 2; }
done

cargo build --release --locked --bin pullthrough --example pingora-floor >&2
BIN=$PWD/target/release/pullthrough
FLOOR_BIN=$PWD/target/release/examples/pingora-floor
WORK=$(mktemp -d /tmp/pullthrough-bench.XXXXXX)
PIDS=()
# SIGINT stops pullthrough at once (no index save); docker-registry drains on SIGINT and
# never exited (full runs left ten behind), so SIGTERM follows for it.
stop_all() {
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 0.2
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
}
cleanup() {
  stop_all
  for f in "$WORK/nginx.pid" "$WORK/front.pid"; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT

. benches/lib.sh

FRONT=$(free_port); PT=$(free_port); NG=$(free_port); DP=$(free_port); IP=$(free_port); FL=$(free_port)

# The upstream: docker-registry with a blob, a config and a manifest.
start_registry "$WORK/upstream" "$(free_port)"; PIDS+=("$REGISTRY_PID")
head -c $((BIG_MIB << 20)) /dev/urandom > "$WORK/big.bin"
{ read -r BIG; read -r MAN; } < <(push_image "$WORK/big.bin" "$WORK")
# Cold blobs for (c) and (d), new ones each round: one for the single client, one for the
# crowd, one huge; each mirror is cold on all of them (every mirror has its own cache).
COLD1=(); COLD50=(); HUGE=()
for _ in $(seq 1 "$ROUNDS"); do
  for _ in $(seq 1 "$SINGLES"); do
    head -c $((COLD_MIB << 20)) /dev/urandom > "$WORK/cold1.bin"; COLD1+=("$(upload "$WORK/cold1.bin" bench/cold)")
  done
  head -c $((COLD_MIB << 20)) /dev/urandom > "$WORK/cold50.bin"; COLD50+=("$(upload "$WORK/cold50.bin" bench/cold)")
  head -c $((HUGE_MIB << 20)) /dev/urandom > "$WORK/huge.bin"; HUGE+=("$(upload "$WORK/huge.bin" bench/huge)")
done
# (e): one cold blob per three-node setup.
declare -A TRIO_BLOB
for setup in cluster independent distribution; do
  head -c $((COLD_MIB << 20)) /dev/urandom > "$WORK/trio.bin"; TRIO_BLOB[$setup]=$(upload "$WORK/trio.bin" bench/cold)
done
rm -f "$WORK"/cold1.bin "$WORK"/cold50.bin "$WORK"/huge.bin "$WORK"/trio.bin

# The front between the mirrors and docker-registry: counts fetches, paces bench/cold.
chmod 755 "$WORK"; mkdir -p "$WORK/front-temp"; chmod 777 "$WORK/front-temp"
sed -e "s|@WORK@|$WORK|g" -e "s|@PORT@|$FRONT|g" -e "s|@UPSTREAM@|127.0.0.1:$UP|g" -e "s|@RATE@|$PACE|g" \
  benches/upstream.conf.in > "$WORK/front.conf"
nginx -c "$WORK/front.conf" -e "$WORK/front-error.log"
wait_port "$FRONT"

# The three mirrors.
cat > "$WORK/pullthrough.yaml" <<YML
pingora: { threads: 2, pid_file: $WORK/pt.pid, upgrade_sock: $WORK/pt.sock }
listen: ["127.0.0.1:$PT"]
default_route: local
routes: { local: { upstream: "http://127.0.0.1:$FRONT" } }
cache: { dir: $WORK/pt-cache, tag_ttl: 1h }
YML
RUST_LOG=warn "$BIN" -c "$WORK/pullthrough.yaml" >"$WORK/pullthrough.log" 2>&1 & PIDS+=($!); PT_PID=$!
sed -e "s|@WORK@|$WORK|g" -e "s|@PORT@|$NG|g" -e "s|@UPSTREAM@|127.0.0.1:$FRONT|g" benches/nginx.conf.in > "$WORK/nginx.conf"
# nginx's workers drop to an unprivileged user when started as root: let them at the cache.
mkdir -p "$WORK/nginx-cache"; chmod 777 "$WORK/nginx-cache"
nginx -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log"
cat > "$WORK/distribution.yml" <<YML
version: 0.1
log: { level: info }
storage: { filesystem: { rootdirectory: $WORK/dist-cache } }
http: { addr: 127.0.0.1:$DP }
proxy: { remoteurl: "http://127.0.0.1:$FRONT" }
YML
env -u AWS_CA_BUNDLE docker-registry serve "$WORK/distribution.yml" >"$WORK/distribution.log" 2>&1 & PIDS+=($!); DP_PID=$!
# The Pingora floor (benches/pingora_floor.rs): the manifest from memory, for (b) only.
"$FLOOR_BIN" "127.0.0.1:$FL" "$WORK/manifest.json" "$MT" "$MAN" >"$WORK/floor.log" 2>&1 & PIDS+=($!); FL_PID=$!
for p in $PT $NG $DP $FL; do wait_port "$p"; done

# Loopback ceiling.
iperf3 -s -p "$IP" -D --logfile "$WORK/iperf.log"
sleep 0.3
CEIL=$(iperf3 -c 127.0.0.1 -p "$IP" -t "$SECS" -J | awk -F'[:,]' '/"sum_received"/{f=1} f&&/"bits_per_second"/{print $2/8; exit}')
pkill -f "iperf3 -s -p $IP" || true

to_bytes() { # wrk's "2.10GB" -> bytes
  awk -v v="$1" 'BEGIN{n=v+0; u=v; sub(/^[0-9.]+/,"",u); m=1; if(u=="KB")m=1024; if(u=="MB")m=1048576; if(u=="GB")m=1073741824; printf "%.0f", n*m}'
}
to_ms() { awk -v v="$1" 'BEGIN{n=v+0; u=v; sub(/^[0-9.]+/,"",u); m=1; if(u=="us")m=0.001; if(u=="s")m=1000; printf "%.2f", n*m}'; }

pids_of() {
  case $1 in
    pullthrough) echo "$PT_PID" ;;
    nginx) local m; m=$(cat "$WORK/nginx.pid"); echo "$m $(pgrep -P "$m" | tr '\n' ' ')" ;;
    distribution) echo "$DP_PID" ;;
    floor) echo "$FL_PID" ;;
  esac
}
cpu_ticks() { # the server's processes together: user + system CPU time so far, in clock ticks
  for p in $(pids_of "$1"); do awk '{print $14 + $15}' "/proc/$p/stat"; done | awk '{s+=$1} END{print s+0}'
}
TICKS=$(getconf CLK_TCK)

# (a) and (b): each cache warmed, then $HIT_ROUNDS rounds, the servers interleaved within each
# round (A B C A B C ...), so a slow moment of the machine falls on all of them; each cell is
# the median of the rounds, with the spread (lowest-highest) beside it.
port_of() { case $1 in pullthrough) echo "$PT" ;; nginx) echo "$NG" ;; distribution) echo "$DP" ;; floor) echo "$FL" ;; esac; }
for name in pullthrough nginx distribution; do
  base="http://127.0.0.1:$(port_of $name)/v2/bench/app"
  for u in "$base/blobs/$BIG" "$base/manifests/$MAN" "$base/manifests/v1"; do
    curl -sf -H "Accept: $MT" -o /dev/null "$u"; curl -sf -H "Accept: $MT" -o /dev/null "$u"
  done
done
declare -A BLOB_R CPU_GB_R RPS_D_R P99_D_R RPS_T_R P99_T_R RPS_D4_R RPS_T4_R
for round in $(seq 1 "$HIT_ROUNDS"); do
  echo "load.sh: (a), (b) round $round of $HIT_ROUNDS" >&2
  # The blobs written for the cold cases and the warm-up are on the disk before a round
  # starts (their writeback took a core from the first server measured), and each round
  # starts with another server.
  sync
  r=$((round - 1))
  order=(pullthrough nginx distribution floor); order=("${order[@]:$((r % 4))}" "${order[@]:0:$((r % 4))}")
  for name in "${order[@]}"; do
    base="http://127.0.0.1:$(port_of $name)/v2/bench/app"
    if [ $name != floor ]; then
      t0=$(cpu_ticks $name)
      out=$(wrk -t2 -c4 -d"${SECS}s" "$base/blobs/$BIG")
      t1=$(cpu_ticks $name)
      BLOB_R[$name]+=" $(to_bytes "$(echo "$out" | awk '/Transfer\/sec/{print $2}')")"
      read_bytes=$(to_bytes "$(echo "$out" | awk '/ read$/{print $(NF-1)}')")
      CPU_GB_R[$name]+=" $(awk -v t=$((t1 - t0)) -v hz="$TICKS" -v b="$read_bytes" 'BEGIN{ if (b>0) printf "%.3f", t/hz/(b/1e9); else print "nan" }')"
    fi
    out=$(wrk -t2 -c64 -d"${SECS}s" --latency -H "Accept: $MT" "$base/manifests/$MAN")
    RPS_D_R[$name]+=" $(echo "$out" | awk '/Requests\/sec/{printf "%.0f", $2}')"
    P99_D_R[$name]+=" $(to_ms "$(echo "$out" | awk '$1=="99%"{print $2}')")"
    out=$(wrk -t2 -c64 -d"${SECS}s" --latency -H "Accept: $MT" "$base/manifests/v1")
    RPS_T_R[$name]+=" $(echo "$out" | awk '/Requests\/sec/{printf "%.0f", $2}')"
    P99_T_R[$name]+=" $(to_ms "$(echo "$out" | awk '$1=="99%"{print $2}')")"
    # Four connections: twice a round, as each run's new connections fall on the server's
    # threads (or nginx's workers) and the client's cores anew.
    for _ in $(seq 1 "$FOUR_RUNS"); do
      out=$(wrk -t2 -c4 -d"${SECS}s" -H "Accept: $MT" "$base/manifests/$MAN")
      RPS_D4_R[$name]+=" $(echo "$out" | awk '/Requests\/sec/{printf "%.0f", $2}')"
      out=$(wrk -t2 -c4 -d"${SECS}s" -H "Accept: $MT" "$base/manifests/v1")
      RPS_T4_R[$name]+=" $(echo "$out" | awk '/Requests\/sec/{printf "%.0f", $2}')"
    done
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
spread() { # "low-high" of the rounds, formatted by $2 (printf)
  tr ' ' '\n' | grep -v '^$' | sort -g | awk -v f="$1" 'NR==1{lo=$1} {hi=$1} END{printf f "-" f, lo, hi}'
}
declare -A BLOB RPS_D P99_D RPS_T P99_T BLOB_S RPS_D_S RPS_T_S CPU_GB RPS_D4 RPS_T4 RPS_D4_S RPS_T4_S
for name in pullthrough nginx distribution floor; do
  if [ $name != floor ]; then # (a) is not the floor's case
    BLOB[$name]=$(echo "${BLOB_R[$name]}" | median); BLOB_S[$name]=$(echo "${BLOB_R[$name]}" | awk '{for(i=1;i<=NF;i++) printf " %.2f", $i/1e9}' | spread %.2f)
    CPU_GB[$name]=$(echo "${CPU_GB_R[$name]}" | median)
  fi
  RPS_D[$name]=$(echo "${RPS_D_R[$name]}" | median); RPS_D_S[$name]=$(echo "${RPS_D_R[$name]}" | spread %d)
  P99_D[$name]=$(echo "${P99_D_R[$name]}" | median)
  RPS_T[$name]=$(echo "${RPS_T_R[$name]}" | median); RPS_T_S[$name]=$(echo "${RPS_T_R[$name]}" | spread %d)
  P99_T[$name]=$(echo "${P99_T_R[$name]}" | median)
  RPS_D4[$name]=$(echo "${RPS_D4_R[$name]}" | median); RPS_D4_S[$name]=$(echo "${RPS_D4_R[$name]}" | spread %d)
  RPS_T4[$name]=$(echo "${RPS_T4_R[$name]}" | median); RPS_T4_S[$name]=$(echo "${RPS_T4_R[$name]}" | spread %d)
done

# (c) and (d): clients at once on a cold blob.
fetches() { grep -c "^GET /v2/.*/blobs/$1 " "$WORK/upstream-access.log" || true; }
crowd() { # url clients size -> "failed total_s ttfb_median_s ttfb_max_s"; every client must get every byte
  local n=$2
  for _ in $(seq 1 "$n"); do echo "$1"; done > "$WORK/crowd.urls"
  crowd_of "$WORK/crowd.urls" "$3"
}
crowd_of() { # url-list size -> as crowd: one client per line of url-list, all at once
  local n t0 t1
  n=$(wc -l < "$1")
  t0=$(date +%s.%N)
  xargs -P "$n" -I{} curl -s -o /dev/null --max-time 600 \
    -w '%{http_code} %{size_download} %{time_starttransfer} %{time_total}\n' {} < "$1" > "$WORK/crowd.out"
  t1=$(date +%s.%N)
  sort -k3 -g "$WORK/crowd.out" | awk -v n="$n" -v size="$2" -v t0="$t0" -v t1="$t1" '
    { if ($1 != 200 || $2 != size) bad++; ttfb[NR] = $3 }
    END { if (NR < n) bad += n - NR; printf "%d %.3f %.3f %.3f\n", bad, t1 - t0, ttfb[int((NR + 1) / 2)], ttfb[NR] }'
}
reset_peak() { for p in $(pids_of "$1"); do echo 5 > "/proc/$p/clear_refs" 2>/dev/null || true; done; }
peak_mib() { # the server's processes together: sum of their peak RSS (VmHWM)
  for p in $(pids_of "$1"); do awk '/VmHWM/{print $2}' "/proc/$p/status"; done | awk '{s+=$1} END{printf "%.1f", s/1024}'
}

# $ROUNDS rounds, the servers interleaved within each, each round on new cold blobs; each cell
# is the median of the rounds (fetches too; failures are summed), spreads listed below.
declare -A ONE_T_R ONE_TTFB_R CROWD_T_R CROWD_TTFB_R CROWD_TTFB_MAX_R CROWD_F_R CROWD_BAD HUGE_F_R HUGE_T_R HUGE_BAD RSS_R
for round in $(seq 1 "$ROUNDS"); do
  r=$((round - 1))
  # Each round starts with another server, and the disk is synced before each server's turn:
  # no server pays for the writeback of the one before.
  order=(pullthrough nginx distribution); order=("${order[@]:$((r % 3))}" "${order[@]:0:$((r % 3))}")
  for name in "${order[@]}"; do
    port=$(port_of $name)
    sync
    echo "load.sh: (c), (d) round $round of $ROUNDS: $name: one client ($SINGLES times), then $CLIENTS, on cold ${COLD_MIB} MiB blobs" >&2
    for i in $(seq 0 $((SINGLES - 1))); do
      read -r bad total ttfb _ < <(crowd "http://127.0.0.1:$port/v2/bench/cold/blobs/${COLD1[$((r * SINGLES + i))]}" 1 $((COLD_MIB << 20)))
      [ "$bad" = 0 ] || { echo "load.sh: $name: the single client failed" >&2; exit 1; }
      ONE_T_R[$name]+=" $total"; ONE_TTFB_R[$name]+=" $ttfb"
    done
    before=$(fetches "${COLD50[$r]}")
    read -r bad total ttfb ttfb_max < <(crowd "http://127.0.0.1:$port/v2/bench/cold/blobs/${COLD50[$r]}" $CLIENTS $((COLD_MIB << 20)))
    sleep 1 # a fetch still running is logged when it ends
    CROWD_BAD[$name]=$(( ${CROWD_BAD[$name]:-0} + bad )); CROWD_T_R[$name]+=" $total"; CROWD_TTFB_R[$name]+=" $ttfb"; CROWD_TTFB_MAX_R[$name]+=" $ttfb_max"
    CROWD_F_R[$name]+=" $(( $(fetches "${COLD50[$r]}") - before ))"
    echo "load.sh: (d) round $round of $ROUNDS: $name: $CLIENTS clients on a cold ${HUGE_MIB} MiB blob" >&2
    sync
    reset_peak $name
    before=$(fetches "${HUGE[$r]}")
    read -r bad total _ _ < <(crowd "http://127.0.0.1:$port/v2/bench/huge/blobs/${HUGE[$r]}" $CLIENTS $((HUGE_MIB << 20)))
    RSS_R[$name]+=" $(peak_mib $name)"
    sleep 1
    HUGE_BAD[$name]=$(( ${HUGE_BAD[$name]:-0} + bad )); HUGE_T_R[$name]+=" $total"; HUGE_F_R[$name]+=" $(( $(fetches "${HUGE[$r]}") - before ))"
  done
done
declare -A ONE_T ONE_TTFB CROWD_T CROWD_TTFB CROWD_TTFB_MAX CROWD_F HUGE_F HUGE_T RSS ONE_TTFB_S ONE_T_S CROWD_T_S RSS_S HUGE_T_S
for name in pullthrough nginx distribution; do
  ONE_T[$name]=$(echo "${ONE_T_R[$name]}" | median); ONE_T_S[$name]=$(echo "${ONE_T_R[$name]}" | spread %.3f)
  ONE_TTFB[$name]=$(echo "${ONE_TTFB_R[$name]}" | median); ONE_TTFB_S[$name]=$(echo "${ONE_TTFB_R[$name]}" | spread %.3f)
  CROWD_T[$name]=$(echo "${CROWD_T_R[$name]}" | median); CROWD_T_S[$name]=$(echo "${CROWD_T_R[$name]}" | spread %.3f)
  CROWD_TTFB[$name]=$(echo "${CROWD_TTFB_R[$name]}" | median)
  CROWD_TTFB_MAX[$name]=$(echo "${CROWD_TTFB_MAX_R[$name]}" | median)
  CROWD_F[$name]=$(echo "${CROWD_F_R[$name]}" | median)
  RSS[$name]=$(echo "${RSS_R[$name]}" | median); RSS_S[$name]=$(echo "${RSS_R[$name]}" | spread %.1f)
  HUGE_T[$name]=$(echo "${HUGE_T_R[$name]}" | median); HUGE_T_S[$name]=$(echo "${HUGE_T_R[$name]}" | spread %.3f)
  HUGE_F[$name]=$(echo "${HUGE_F_R[$name]}" | median)
done

# (e) three nodes each: a pullthrough cluster (keep_local off, so a hit through a node that
# does not own the object crosses a peer hop every time), three independent pullthrough nodes,
# three distribution proxies. The single servers above are stopped first: two cores.
kill -INT "$PT_PID" "$FL_PID" 2>/dev/null || true; kill "$DP_PID" "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
head -c 32 /dev/urandom | base64 > "$WORK/cluster.secret"
declare -A TRIO_PORTS
CL_PEERS=(); CL_ADMIN=()
for i in 0 1 2; do CL_PEERS+=("127.0.0.1:$(free_port)"); CL_ADMIN+=("$(free_port)"); done
peer_list=$(printf '"%s", ' "${CL_PEERS[@]}"); peer_list=${peer_list%, }
for i in 0 1 2; do
  for setup in cluster independent; do
    port=$(free_port); TRIO_PORTS[$setup]="${TRIO_PORTS[$setup]:-} $port"
    extra=""; admin=""
    if [ $setup = cluster ]; then
      extra="cluster: { node: \"${CL_PEERS[$i]}\", peers: [$peer_list], secret_file: $WORK/cluster.secret, keep_local: false }"
      admin="admin: { listen: \"127.0.0.1:${CL_ADMIN[$i]}\" }"
    fi
    cat > "$WORK/$setup$i.yaml" <<YML
pingora: { threads: 1, pid_file: $WORK/$setup$i.pid, upgrade_sock: $WORK/$setup$i.sock }
listen: ["127.0.0.1:$port"]
default_route: local
routes: { local: { upstream: "http://127.0.0.1:$FRONT" } }
cache: { dir: $WORK/$setup$i-cache, tag_ttl: 1h }
$admin
$extra
YML
    RUST_LOG=warn "$BIN" -c "$WORK/$setup$i.yaml" >"$WORK/$setup$i.log" 2>&1 & PIDS+=($!)
  done
  port=$(free_port); TRIO_PORTS[distribution]="${TRIO_PORTS[distribution]:-} $port"
  cat > "$WORK/distribution$i.yml" <<YML
version: 0.1
log: { level: error }
storage: { filesystem: { rootdirectory: $WORK/dist$i-cache } }
http: { addr: 127.0.0.1:$port }
proxy: { remoteurl: "http://127.0.0.1:$FRONT" }
YML
  env -u AWS_CA_BUNDLE docker-registry serve "$WORK/distribution$i.yml" >"$WORK/distribution$i.log" 2>&1 & PIDS+=($!)
done
for setup in cluster independent distribution; do for p in ${TRIO_PORTS[$setup]}; do wait_port "$p"; done; done
# Every node sees the other two pass their health checks (each second).
for a in "${CL_ADMIN[@]}"; do
  for _ in $(seq 1 100); do
    [ "$(curl -sf "http://127.0.0.1:$a/stats" | grep -c '"live": true')" = 3 ] && break; sleep 0.1
  done
done
trio_crowd() { # setup blob -> as crowd; client i asks node i % 3
  local ports=(${TRIO_PORTS[$1]})
  for i in $(seq 0 $((CLIENTS - 1))); do echo "http://127.0.0.1:${ports[$((i % 3))]}/v2/bench/cold/blobs/$2"; done > "$WORK/trio.urls"
  crowd_of "$WORK/trio.urls" $((COLD_MIB << 20))
}
declare -A TRIO_F TRIO_T TRIO_TTFB TRIO_TTFB_MAX TRIO_BAD
for setup in cluster independent distribution; do
  echo "load.sh: (e) $setup: $CLIENTS clients over three nodes on a cold ${COLD_MIB} MiB blob" >&2
  before=$(fetches "${TRIO_BLOB[$setup]}")
  read -r bad total ttfb ttfb_max < <(trio_crowd $setup "${TRIO_BLOB[$setup]}")
  sleep 1
  TRIO_BAD[$setup]=$bad; TRIO_T[$setup]=$total; TRIO_TTFB[$setup]=$ttfb; TRIO_TTFB_MAX[$setup]=$ttfb_max
  TRIO_F[$setup]=$(( $(fetches "${TRIO_BLOB[$setup]}") - before ))
done
# The peer hop on a hit: the manifest by digest through its owner and through the others,
# 4 connections; the owner is the node that forwarded nothing.
peer_out() { curl -sf "http://127.0.0.1:$1/metrics" | awk '/^pullthrough_peer_requests_total\{direction="out"/{s+=$2} END{print s+0}'; }
ports=(${TRIO_PORTS[cluster]}); HOP_OWNER=""; HOP_OTHERS=()
for i in 0 1 2; do
  before=$(peer_out "${CL_ADMIN[$i]}")
  curl -sf -H "Accept: $MT" -o /dev/null "http://127.0.0.1:${ports[$i]}/v2/bench/app/manifests/$MAN"
  if [ "$(peer_out "${CL_ADMIN[$i]}")" = "$before" ]; then HOP_OWNER=${ports[$i]}; else HOP_OTHERS+=("${ports[$i]}"); fi
done
p50() { wrk -t2 -c4 -d"${SECS}s" --latency -H "Accept: $MT" "http://127.0.0.1:$1/v2/bench/app/manifests/$MAN" | awk '$1=="50%"{print $2}'; }
HOP_LOCAL=$(to_ms "$(p50 "$HOP_OWNER")")
HOP_PEER=$(to_ms "$(p50 "${HOP_OTHERS[0]}")")

# (f) the big cache (benches/bigcache.rs), alone on the machine: every server above stops first.
stop_all
for f in "$WORK/nginx.pid" "$WORK/front.pid"; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
sleep 1
# Their caches and the upstream's blobs (tens of GB in a full run) make room for its ~10 GB.
find "$WORK" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
rm -f target/BIGCACHE.md
echo "load.sh: (f) the big cache, $BIG_ENTRIES entries" >&2
cargo bench --locked --bench bigcache -- --entries "$BIG_ENTRIES" >&2

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b>0) printf "%.2f", a/b; else print "-" }'; }
gbps() { awk -v b="$1" 'BEGIN{printf "%.2f", b/1e9}'; }
{
  echo "# Benchmarks"
  echo
  echo "Written by \`benches/load.sh$([ $SMOKE = 1 ] && echo ' --smoke')\` on $(date -u +%Y-%m-%d): $(nproc) cores ($(awk -F': *' '/model name/{print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)."
  echo "All servers on loopback in front of one docker-registry (through an nginx front that counts fetches); clients (wrk, curl) on the same cores."
  echo "Every case runs in rounds, the servers interleaved within each round (A B C A B C ...), each round starting with the next server; each cell is the median of the rounds, the spreads (lowest-highest) are listed below the table. (a), (b): ${HIT_ROUNDS} rounds, caches warm, the disk synced before each round, ${SECS} s per case; the 4-connection cases ${FOUR_RUNS} times a round (new connections each time), so their cells are medians of $((HIT_ROUNDS * FOUR_RUNS)). (c), (d): ${ROUNDS} rounds, new cold blobs each round, each round starting with the next server, the disk synced before each server's turn; (c) the single client on ${SINGLES} cold blobs per round, so its cells are medians of $((ROUNDS * SINGLES)); (c) the cold repository paced to ${PACE} bytes/s (nginx limit_rate) per upstream connection after a first-second burst (an internet upstream is slower than the mirror's clients); (d) unpaced; failures are summed over the rounds."
  echo
  echo "| case | pullthrough | nginx | distribution (proxy) | pullthrough/nginx | pullthrough/distribution |"
  echo "|---|---|---|---|---|---|"
  echo "| (a) ${BIG_MIB} MiB blob hit, 4 conns, GB/s | $(gbps "${BLOB[pullthrough]}") | $(gbps "${BLOB[nginx]}") | $(gbps "${BLOB[distribution]}") | $(ratio "${BLOB[pullthrough]}" "${BLOB[nginx]}") | $(ratio "${BLOB[pullthrough]}" "${BLOB[distribution]}") |"
  echo "| (a) CPU seconds per GB served (server, user + system) | ${CPU_GB[pullthrough]} | ${CPU_GB[nginx]} | ${CPU_GB[distribution]} | $(ratio "${CPU_GB[pullthrough]}" "${CPU_GB[nginx]}") | $(ratio "${CPU_GB[pullthrough]}" "${CPU_GB[distribution]}") |"
  echo "| (b) manifest by digest, 4 conns, req/s | ${RPS_D4[pullthrough]} | ${RPS_D4[nginx]} | ${RPS_D4[distribution]} | $(ratio "${RPS_D4[pullthrough]}" "${RPS_D4[nginx]}") | $(ratio "${RPS_D4[pullthrough]}" "${RPS_D4[distribution]}") |"
  echo "| (b) manifest by tag, 4 conns, req/s | ${RPS_T4[pullthrough]} | ${RPS_T4[nginx]} | ${RPS_T4[distribution]} | $(ratio "${RPS_T4[pullthrough]}" "${RPS_T4[nginx]}") | $(ratio "${RPS_T4[pullthrough]}" "${RPS_T4[distribution]}") |"
  echo "| (b) manifest by digest, 64 conns, req/s | ${RPS_D[pullthrough]} | ${RPS_D[nginx]} | ${RPS_D[distribution]} | $(ratio "${RPS_D[pullthrough]}" "${RPS_D[nginx]}") | $(ratio "${RPS_D[pullthrough]}" "${RPS_D[distribution]}") |"
  echo "| (b) manifest by digest, p99 ms | ${P99_D[pullthrough]} | ${P99_D[nginx]} | ${P99_D[distribution]} | | |"
  echo "| (b) manifest by tag, 64 conns, req/s | ${RPS_T[pullthrough]} | ${RPS_T[nginx]} | ${RPS_T[distribution]} | $(ratio "${RPS_T[pullthrough]}" "${RPS_T[nginx]}") | $(ratio "${RPS_T[pullthrough]}" "${RPS_T[distribution]}") |"
  echo "| (b) manifest by tag, p99 ms | ${P99_T[pullthrough]} | ${P99_T[nginx]} | ${P99_T[distribution]} | | |"
  echo "| (c) cold ${COLD_MIB} MiB blob, 1 client: total s | ${ONE_T[pullthrough]} | ${ONE_T[nginx]} | ${ONE_T[distribution]} | $(ratio "${ONE_T[pullthrough]}" "${ONE_T[nginx]}") | $(ratio "${ONE_T[pullthrough]}" "${ONE_T[distribution]}") |"
  echo "| (c) 1 client: time to first byte s | ${ONE_TTFB[pullthrough]} | ${ONE_TTFB[nginx]} | ${ONE_TTFB[distribution]} | | |"
  echo "| (c) $CLIENTS clients: upstream fetches | ${CROWD_F[pullthrough]} | ${CROWD_F[nginx]} | ${CROWD_F[distribution]} | | |"
  echo "| (c) $CLIENTS clients: total s | ${CROWD_T[pullthrough]} | ${CROWD_T[nginx]} | ${CROWD_T[distribution]} | $(ratio "${CROWD_T[pullthrough]}" "${CROWD_T[nginx]}") | $(ratio "${CROWD_T[pullthrough]}" "${CROWD_T[distribution]}") |"
  echo "| (c) $CLIENTS clients: total / 1 client | $(ratio "${CROWD_T[pullthrough]}" "${ONE_T[pullthrough]}") | $(ratio "${CROWD_T[nginx]}" "${ONE_T[nginx]}") | $(ratio "${CROWD_T[distribution]}" "${ONE_T[distribution]}") | | |"
  echo "| (c) $CLIENTS clients: first byte, median s | ${CROWD_TTFB[pullthrough]} | ${CROWD_TTFB[nginx]} | ${CROWD_TTFB[distribution]} | | |"
  echo "| (c) $CLIENTS clients: first byte, slowest s | ${CROWD_TTFB_MAX[pullthrough]} | ${CROWD_TTFB_MAX[nginx]} | ${CROWD_TTFB_MAX[distribution]} | | |"
  echo "| (c) $CLIENTS clients: failed | ${CROWD_BAD[pullthrough]} | ${CROWD_BAD[nginx]} | ${CROWD_BAD[distribution]} | | |"
  echo "| (d) cold ${HUGE_MIB} MiB blob, $CLIENTS clients: peak RSS MiB | ${RSS[pullthrough]} | ${RSS[nginx]} | ${RSS[distribution]} | $(ratio "${RSS[pullthrough]}" "${RSS[nginx]}") | $(ratio "${RSS[pullthrough]}" "${RSS[distribution]}") |"
  echo "| (d) upstream fetches | ${HUGE_F[pullthrough]} | ${HUGE_F[nginx]} | ${HUGE_F[distribution]} | | |"
  echo "| (d) total s | ${HUGE_T[pullthrough]} | ${HUGE_T[nginx]} | ${HUGE_T[distribution]} | $(ratio "${HUGE_T[pullthrough]}" "${HUGE_T[nginx]}") | $(ratio "${HUGE_T[pullthrough]}" "${HUGE_T[distribution]}") |"
  echo "| (d) failed | ${HUGE_BAD[pullthrough]} | ${HUGE_BAD[nginx]} | ${HUGE_BAD[distribution]} | | |"
  echo
  echo "Spread over the rounds (lowest-highest), pullthrough / nginx / distribution: (a) GB/s ${BLOB_S[pullthrough]} / ${BLOB_S[nginx]} / ${BLOB_S[distribution]}; (b) by digest req/s ${RPS_D_S[pullthrough]} / ${RPS_D_S[nginx]} / ${RPS_D_S[distribution]}; (b) by tag req/s ${RPS_T_S[pullthrough]} / ${RPS_T_S[nginx]} / ${RPS_T_S[distribution]}; (b) 4 conns by digest ${RPS_D4_S[pullthrough]} / ${RPS_D4_S[nginx]} / ${RPS_D4_S[distribution]}, by tag ${RPS_T4_S[pullthrough]} / ${RPS_T4_S[nginx]} / ${RPS_T4_S[distribution]}. (c) 1 client, first byte s ${ONE_TTFB_S[pullthrough]} / ${ONE_TTFB_S[nginx]} / ${ONE_TTFB_S[distribution]}, total s ${ONE_T_S[pullthrough]} / ${ONE_T_S[nginx]} / ${ONE_T_S[distribution]}; (c) $CLIENTS clients, total s ${CROWD_T_S[pullthrough]} / ${CROWD_T_S[nginx]} / ${CROWD_T_S[distribution]}; (d) peak RSS MiB ${RSS_S[pullthrough]} / ${RSS_S[nginx]} / ${RSS_S[distribution]}, total s ${HUGE_T_S[pullthrough]} / ${HUGE_T_S[nginx]} / ${HUGE_T_S[distribution]}. A ratio is a lead only where the spreads do not overlap."
  echo
  echo "Loopback ceiling (iperf3): $(gbps "$CEIL") GB/s. pullthrough (a) / ceiling: $(ratio "${BLOB[pullthrough]}" "$CEIL")."
  echo
  echo "(b) beside the floor of any server on Pingora 0.9.1's HTTP/1 stack: \`benches/pingora_floor.rs\`, a ProxyHttp that answers every request from request_filter with the manifest held in memory (same threads and runtime layout as pullthrough; no cache, no routing, no logging), measured in the same rounds."
  echo
  echo "| (b) case, req/s | Pingora floor | pullthrough/floor | nginx/floor |"
  echo "|---|---|---|---|"
  echo "| manifest by digest, 4 conns | ${RPS_D4[floor]} | $(ratio "${RPS_D4[pullthrough]}" "${RPS_D4[floor]}") | $(ratio "${RPS_D4[nginx]}" "${RPS_D4[floor]}") |"
  echo "| manifest by tag, 4 conns | ${RPS_T4[floor]} | $(ratio "${RPS_T4[pullthrough]}" "${RPS_T4[floor]}") | $(ratio "${RPS_T4[nginx]}" "${RPS_T4[floor]}") |"
  echo "| manifest by digest, 64 conns | ${RPS_D[floor]} | $(ratio "${RPS_D[pullthrough]}" "${RPS_D[floor]}") | $(ratio "${RPS_D[nginx]}" "${RPS_D[floor]}") |"
  echo "| manifest by tag, 64 conns | ${RPS_T[floor]} | $(ratio "${RPS_T[pullthrough]}" "${RPS_T[floor]}") | $(ratio "${RPS_T[nginx]}" "${RPS_T[floor]}") |"
  echo
  echo "Floor spread (lowest-highest): 4 conns by digest ${RPS_D4_S[floor]}, by tag ${RPS_T4_S[floor]}; 64 conns by digest ${RPS_D_S[floor]}, by tag ${RPS_T_S[floor]}."
  echo
  echo "(e) Three nodes each (one thread per pullthrough node), $CLIENTS clients spread over them (client i on node i mod 3) on one cold ${COLD_MIB} MiB blob, paced as (c). The cluster runs with "'`keep_local: false`'", so the hit through a node that does not own the object below crosses a peer hop every time."
  echo
  echo "| case | pullthrough cluster | 3 independent pullthrough | 3 distribution (proxy) |"
  echo "|---|---|---|---|"
  echo "| (e) upstream fetches | ${TRIO_F[cluster]} | ${TRIO_F[independent]} | ${TRIO_F[distribution]} |"
  echo "| (e) total s | ${TRIO_T[cluster]} | ${TRIO_T[independent]} | ${TRIO_T[distribution]} |"
  echo "| (e) first byte, median s | ${TRIO_TTFB[cluster]} | ${TRIO_TTFB[independent]} | ${TRIO_TTFB[distribution]} |"
  echo "| (e) first byte, slowest s | ${TRIO_TTFB_MAX[cluster]} | ${TRIO_TTFB_MAX[independent]} | ${TRIO_TTFB_MAX[distribution]} |"
  echo "| (e) failed | ${TRIO_BAD[cluster]} | ${TRIO_BAD[independent]} | ${TRIO_BAD[distribution]} |"
  echo
  echo "Peer hop on a hit (manifest by digest, 4 connections, median latency): through its owner ${HOP_LOCAL} ms, through another node ${HOP_PEER} ms (+$(awk -v a="$HOP_PEER" -v b="$HOP_LOCAL" 'BEGIN{printf "%.2f", a-b}') ms)."
  echo
  cat target/BIGCACHE.md
} > "$OUT"
cat "$OUT"
# Every cell must hold a number: a failed measurement is a failed run.
if grep -qE '\|  *(\||$)|\| - \||nan' <(sed -n '/^| (/p;/^| manifest/p' "$OUT" | sed 's/| | |$//'); then
  echo "load.sh: a measurement is missing" >&2
  exit 1
fi
