#!/usr/bin/env bash
# Load benchmark: pullthrough side by side with nginx (proxy_cache) and distribution's proxy
# mode, all on loopback in front of one Debian docker-registry, measured the same way with
# wrk in the same run. Writes BENCHMARKS.md.
#
#   benches/load.sh            full run (256 MiB blob, 10 s per case) -> BENCHMARKS.md
#   benches/load.sh --smoke    2 s per case, 8 MiB blob -> target/BENCHMARKS-smoke.md (CI runs
#                              this so the harness cannot rot; it asserts no timings)
#
# Cases so far: (a) cache-hit GET of the big blob, 4 connections: bytes/s;
# (b) cache-hit GET of a manifest by digest and by tag, 64 connections: requests/s and p99;
# and the loopback ceiling (iperf3). Cases (c) cold blob under 50 clients and (d) peak RSS are
# still to come (issue 5).
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
if [ $SMOKE = 1 ]; then BIG_MIB=8; SECS=2; OUT=target/BENCHMARKS-smoke.md; else BIG_MIB=256; SECS=10; OUT=BENCHMARKS.md; fi

for tool in docker-registry nginx wrk iperf3 curl sha256sum; do
  command -v "$tool" >/dev/null || { echo "load.sh: $tool is missing (apt-get install docker-registry nginx-light wrk iperf3 curl)" >&2; exit 2; }
done

cargo build --release --locked --bin pullthrough >&2
BIN=$PWD/target/release/pullthrough
WORK=$(mktemp -d /tmp/pullthrough-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
  || shuf -i 20000-60000 -n 1; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing listens on $1" >&2; exit 1; }

UP=$(free_port); PT=$(free_port); NG=$(free_port); DP=$(free_port); IP=$(free_port)

# The upstream: docker-registry with a blob, a config and a manifest.
cat > "$WORK/upstream.yml" <<YML
version: 0.1
log: { level: error }
storage: { filesystem: { rootdirectory: $WORK/upstream } }
http: { addr: 127.0.0.1:$UP }
YML
env -u AWS_CA_BUNDLE docker-registry serve "$WORK/upstream.yml" >"$WORK/upstream.log" 2>&1 & PIDS+=($!)
wait_port "$UP"

upload() { # file -> digest
  local digest="sha256:$(sha256sum "$1" | cut -d' ' -f1)"
  local loc
  loc=$(curl -sf -X POST -D - -o /dev/null "http://127.0.0.1:$UP/v2/bench/app/blobs/uploads/" | tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
  case "$loc" in http*) ;; *) loc="http://127.0.0.1:$UP$loc" ;; esac
  local sep='?'; case "$loc" in *\?*) sep='&' ;; esac
  curl -sf -X PUT -H 'Content-Type: application/octet-stream' --data-binary @"$1" "$loc${sep}digest=$digest" -o /dev/null
  echo "$digest"
}
head -c $((BIG_MIB << 20)) /dev/urandom > "$WORK/big.bin"
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}' > "$WORK/config.json"
BIG=$(upload "$WORK/big.bin"); CFG=$(upload "$WORK/config.json")
MT=application/vnd.oci.image.manifest.v1+json
printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%d}]}' \
  "$MT" "$CFG" "$(stat -c %s "$WORK/config.json")" "$BIG" "$(stat -c %s "$WORK/big.bin")" > "$WORK/manifest.json"
curl -sf -X PUT -H "Content-Type: $MT" --data-binary @"$WORK/manifest.json" "http://127.0.0.1:$UP/v2/bench/app/manifests/v1" -o /dev/null
MAN="sha256:$(sha256sum "$WORK/manifest.json" | cut -d' ' -f1)"

# The three mirrors.
cat > "$WORK/pullthrough.yaml" <<YML
pingora: { threads: 2, pid_file: $WORK/pt.pid, upgrade_sock: $WORK/pt.sock }
listen: ["127.0.0.1:$PT"]
default_route: local
routes: { local: { upstream: "http://127.0.0.1:$UP" } }
cache: { dir: $WORK/pt-cache, tag_ttl: 1h }
YML
RUST_LOG=warn "$BIN" -c "$WORK/pullthrough.yaml" >"$WORK/pullthrough.log" 2>&1 & PIDS+=($!)
sed -e "s|@WORK@|$WORK|g" -e "s|@PORT@|$NG|g" -e "s|@UPSTREAM@|127.0.0.1:$UP|g" benches/nginx.conf.in > "$WORK/nginx.conf"
# nginx's workers drop to an unprivileged user when started as root: let them at the cache.
chmod 755 "$WORK"; mkdir -p "$WORK/nginx-cache"; chmod 777 "$WORK/nginx-cache"
nginx -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log"
cat > "$WORK/distribution.yml" <<YML
version: 0.1
log: { level: info }
storage: { filesystem: { rootdirectory: $WORK/dist-cache } }
http: { addr: 127.0.0.1:$DP }
proxy: { remoteurl: "http://127.0.0.1:$UP" }
YML
env -u AWS_CA_BUNDLE docker-registry serve "$WORK/distribution.yml" >"$WORK/distribution.log" 2>&1 & PIDS+=($!)
for p in $PT $NG $DP; do wait_port "$p"; done

# Loopback ceiling.
iperf3 -s -p "$IP" -D --logfile "$WORK/iperf.log"
sleep 0.3
CEIL=$(iperf3 -c 127.0.0.1 -p "$IP" -t "$SECS" -J | awk -F'[:,]' '/"sum_received"/{f=1} f&&/"bits_per_second"/{print $2/8; exit}')
pkill -f "iperf3 -s -p $IP" || true

to_bytes() { # wrk's "2.10GB" -> bytes
  awk -v v="$1" 'BEGIN{n=v+0; u=v; sub(/^[0-9.]+/,"",u); m=1; if(u=="KB")m=1024; if(u=="MB")m=1048576; if(u=="GB")m=1073741824; printf "%.0f", n*m}'
}
to_ms() { awk -v v="$1" 'BEGIN{n=v+0; u=v; sub(/^[0-9.]+/,"",u); m=1; if(u=="us")m=0.001; if(u=="s")m=1000; printf "%.2f", n*m}'; }

declare -A BLOB RPS_D P99_D RPS_T P99_T
for name in pullthrough nginx distribution; do
  case $name in pullthrough) port=$PT ;; nginx) port=$NG ;; distribution) port=$DP ;; esac
  base="http://127.0.0.1:$port/v2/bench/app"
  # Warm each cache, then measure hits.
  for u in "$base/blobs/$BIG" "$base/manifests/$MAN" "$base/manifests/v1"; do
    curl -sf -H "Accept: $MT" -o /dev/null "$u"; curl -sf -H "Accept: $MT" -o /dev/null "$u"
  done
  out=$(wrk -t2 -c4 -d"${SECS}s" "$base/blobs/$BIG")
  BLOB[$name]=$(to_bytes "$(echo "$out" | awk '/Transfer\/sec/{print $2}')")
  out=$(wrk -t2 -c64 -d"${SECS}s" --latency -H "Accept: $MT" "$base/manifests/$MAN")
  RPS_D[$name]=$(echo "$out" | awk '/Requests\/sec/{printf "%.0f", $2}')
  P99_D[$name]=$(to_ms "$(echo "$out" | awk '$1=="99%"{print $2}')")
  out=$(wrk -t2 -c64 -d"${SECS}s" --latency -H "Accept: $MT" "$base/manifests/v1")
  RPS_T[$name]=$(echo "$out" | awk '/Requests\/sec/{printf "%.0f", $2}')
  P99_T[$name]=$(to_ms "$(echo "$out" | awk '$1=="99%"{print $2}')")
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b>0) printf "%.2f", a/b; else print "-" }'; }
gbps() { awk -v b="$1" 'BEGIN{printf "%.2f", b/1e9}'; }
{
  echo "# Benchmarks"
  echo
  echo "Written by \`benches/load.sh$([ $SMOKE = 1 ] && echo ' --smoke')\` on $(date -u +%Y-%m-%d), $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)."
  echo "All servers on loopback in front of one docker-registry; wrk on the same machine; ${SECS} s per case; caches warm."
  echo
  echo "| case | pullthrough | nginx | distribution (proxy) | pullthrough/nginx | pullthrough/distribution |"
  echo "|---|---|---|---|---|---|"
  echo "| (a) ${BIG_MIB} MiB blob hit, 4 conns, GB/s | $(gbps "${BLOB[pullthrough]}") | $(gbps "${BLOB[nginx]}") | $(gbps "${BLOB[distribution]}") | $(ratio "${BLOB[pullthrough]}" "${BLOB[nginx]}") | $(ratio "${BLOB[pullthrough]}" "${BLOB[distribution]}") |"
  echo "| (b) manifest by digest, 64 conns, req/s | ${RPS_D[pullthrough]} | ${RPS_D[nginx]} | ${RPS_D[distribution]} | $(ratio "${RPS_D[pullthrough]}" "${RPS_D[nginx]}") | $(ratio "${RPS_D[pullthrough]}" "${RPS_D[distribution]}") |"
  echo "| (b) manifest by digest, p99 ms | ${P99_D[pullthrough]} | ${P99_D[nginx]} | ${P99_D[distribution]} | | |"
  echo "| (b) manifest by tag, 64 conns, req/s | ${RPS_T[pullthrough]} | ${RPS_T[nginx]} | ${RPS_T[distribution]} | $(ratio "${RPS_T[pullthrough]}" "${RPS_T[nginx]}") | $(ratio "${RPS_T[pullthrough]}" "${RPS_T[distribution]}") |"
  echo "| (b) manifest by tag, p99 ms | ${P99_T[pullthrough]} | ${P99_T[nginx]} | ${P99_T[distribution]} | | |"
  echo
  echo "Loopback ceiling (iperf3): $(gbps "$CEIL") GB/s. pullthrough (a) / ceiling: $(ratio "${BLOB[pullthrough]}" "$CEIL")."
} > "$OUT"
cat "$OUT"
# Every cell must hold a number: a failed measurement is a failed run.
if grep -qE '\|  *(\||$)|\| - \||nan' <(sed -n '/^| (/p' "$OUT" | sed 's/| | |$//'); then
  echo "load.sh: a measurement is missing" >&2
  exit 1
fi
