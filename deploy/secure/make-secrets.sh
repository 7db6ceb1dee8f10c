#!/usr/bin/env bash
# Secrets of the secured compose stack (compose.secure.yaml), written to DIR
# (default: deploy/secure/generated, which git ignores):
#
#   ca.crt, ca.key                 a CA of this stack only
#   kafka/kafka.p12                the broker's key and certificate (kafka, localhost, 127.0.0.1),
#   kafka/keystore-password        PKCS#12, with its password; kafka/kafka_server_jaas.conf
#   kafka-password                 the SCRAM-SHA-512 password of the Kafka user "streamrnn"
#   metrics/tls.crt, tls.key       the detector's /metrics certificate (streamrnn, localhost)
#   metrics/web.yml                its Prometheus web config: TLS, basic-auth user "prometheus"
#   scrape-password                that user's password, for Prometheus's password_file
#
# Needs openssl, and python3 with bcrypt (or htpasswd) for the basic-auth hash. Files are made
# readable by the containers' users (streamrnn 10001, prometheus nobody): a demo stack on one
# host. In production, take them from your secret store and give each only to its reader.
# Run again with --force to replace them.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
force=0
if [[ "${1-}" == "--force" ]]; then force=1; shift; fi
out="${1:-$here/generated}"
if [[ -e "$out/ca.crt" && $force -eq 0 ]]; then
  echo "$out already holds secrets; use --force to replace them" >&2
  exit 1
fi
mkdir -p "$out/kafka" "$out/metrics"
umask 022

random() { openssl rand -base64 30 | tr -d '/+=\n' | cut -c1-32; }

leaf() {  # leaf NAME DIR SAN...: a key and a certificate signed by the CA
  local name=$1 dir=$2; shift 2
  local san
  san=$(printf '%s,' "$@"); san=${san%,}
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
    -keyout "$dir/tls.key" -out "$dir/tls.csr" 2>/dev/null
  openssl x509 -req -in "$dir/tls.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
    -days 825 -sha256 -out "$dir/tls.crt" \
    -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san") 2>/dev/null
  rm -f "$dir/tls.csr"
}

openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
  -subj "/CN=streamrnn compose CA" -keyout "$out/ca.key" -out "$out/ca.crt" 2>/dev/null
chmod 600 "$out/ca.key"

# The broker: PKCS#12 keystore (what the apache/kafka image's start script expects).
leaf kafka "$out/kafka" DNS:kafka DNS:localhost IP:127.0.0.1
random > "$out/kafka/keystore-password"
openssl pkcs12 -export -name kafka -in "$out/kafka/tls.crt" -inkey "$out/kafka/tls.key" \
  -certfile "$out/ca.crt" -passout "file:$out/kafka/keystore-password" -out "$out/kafka/kafka.p12"
rm -f "$out/kafka/tls.key"
cp "$here/kafka_server_jaas.conf" "$out/kafka/kafka_server_jaas.conf"

random > "$out/kafka-password"

# The detector's metrics endpoint and the user Prometheus scrapes it as.
leaf streamrnn "$out/metrics" DNS:streamrnn DNS:localhost IP:127.0.0.1
random > "$out/scrape-password"
scrape=$(cat "$out/scrape-password")
if python3 -c 'import bcrypt' 2>/dev/null; then
  hash=$(SCRAPE="$scrape" python3 -c \
    'import bcrypt, os; print(bcrypt.hashpw(os.environ["SCRAPE"].encode(), bcrypt.gensalt(10)).decode())')
elif command -v htpasswd >/dev/null; then
  hash=$(htpasswd -inBC 10 prometheus <<<"$scrape" | cut -d: -f2-)
else
  echo "need python3 with bcrypt (pip install bcrypt) or htpasswd (apache2-utils)" >&2
  exit 1
fi
cat > "$out/metrics/web.yml" <<YAML
# Prometheus web config of the detector's endpoint (service.metrics_web_config); paths are
# relative to this file. /healthz and /readyz stay open for probes.
tls_server_config:
  cert_file: tls.crt
  key_file: tls.key
basic_auth_users:
  prometheus: '$hash'
YAML

chmod 644 "$out"/kafka-password "$out"/scrape-password "$out"/kafka/* "$out"/metrics/*
echo "secrets written to $out"
