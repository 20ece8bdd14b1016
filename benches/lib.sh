# Shared by the benchmark scripts (sourced): ports, and the upstream they all stand in front
# of, Debian's docker-registry with an OCI image pushed to it.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
  || shuf -i 20000-60000 -n 1; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing listens on $1" >&2; exit 1; }

MT=application/vnd.oci.image.manifest.v1+json

# start_registry DIR PORT: docker-registry on 127.0.0.1:PORT storing under DIR (its pid in
# REGISTRY_PID). UP (the port upload and push_image use) is set to PORT.
start_registry() {
  cat > "$1.yml" <<YML
version: 0.1
log: { level: error }
storage: { filesystem: { rootdirectory: $1 } }
http: { addr: 127.0.0.1:$2 }
YML
  env -u AWS_CA_BUNDLE docker-registry serve "$1.yml" >"$1.log" 2>&1 &
  REGISTRY_PID=$!
  UP=$2
  wait_port "$UP"
}

upload() { # file [repository] -> digest
  local digest="sha256:$(sha256sum "$1" | cut -d' ' -f1)"
  local loc
  loc=$(curl -sf -X POST -D - -o /dev/null "http://127.0.0.1:$UP/v2/${2:-bench/app}/blobs/uploads/" | tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
  case "$loc" in http*) ;; *) loc="http://127.0.0.1:$UP$loc" ;; esac
  local sep='?'; case "$loc" in *\?*) sep='&' ;; esac
  curl -sf -X PUT -H 'Content-Type: application/octet-stream' -T "$1" "$loc${sep}digest=$digest" -o /dev/null
  echo "$digest"
}

# push_image LAYER_FILE WORKDIR: bench/app:v1, an OCI manifest of a small config and the
# layer; prints the layer's digest and the manifest's, one per line.
push_image() {
  printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}' > "$2/config.json"
  local layer config
  layer=$(upload "$1"); config=$(upload "$2/config.json")
  printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%d}]}' \
    "$MT" "$config" "$(stat -c %s "$2/config.json")" "$layer" "$(stat -c %s "$1")" > "$2/manifest.json"
  curl -sf -X PUT -H "Content-Type: $MT" --data-binary @"$2/manifest.json" "http://127.0.0.1:$UP/v2/bench/app/manifests/v1" -o /dev/null
  echo "$layer"
  echo "sha256:$(sha256sum "$2/manifest.json" | cut -d' ' -f1)"
}
