#!/usr/bin/env bash
# Make the certificates of a tls+tcp:// deployment with the openssl CLI
# (docs/daemon.md, "Many nodes"): a CA, the daemon's certificate and one per
# client, EC P-256 keys, each signed by the CA of DIR.
#
#   scripts/tls-certs.sh ca DIR [DAYS]              DIR/ca.pem, DIR/ca.key (keep ca.key offline)
#   scripts/tls-certs.sh server DIR NAME HOST... [--days N]
#                                                   DIR/NAME.pem, DIR/NAME.key for altgradd:
#                                                   HOST = the names and IP addresses clients dial
#   scripts/tls-certs.sh client DIR NAME [--days N] DIR/NAME.pem, DIR/NAME.key for one trainer host
#
# Keys are written readable by their owner only. DAYS defaults to 365.
set -euo pipefail
usage() { sed -n '2,13p' "$0" >&2; exit 2; }
(($# >= 2)) || usage
kind=$1 dir=$2
shift 2
days=365
mkdir -p "$dir"
umask 077
case $kind in
ca)
  (($# >= 1)) && days=$1
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" -days "$days" -subj "/CN=altgrad CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null
  chmod 644 "$dir/ca.pem"
  echo "$dir/ca.pem (give it to the daemon and every client), $dir/ca.key (keep it safe)"
  ;;
server | client)
  (($# >= 1)) || usage
  name=$1
  shift
  sans=()
  while (($#)); do
    case $1 in
    --days) days=$2; shift 2 ;;
    *) if [[ $1 =~ ^[0-9.]+$ || $1 == *:* ]]; then sans+=("IP:$1"); else sans+=("DNS:$1"); fi
       shift ;;
    esac
  done
  [[ -f $dir/ca.pem && -f $dir/ca.key ]] || { echo "no CA in $dir: run '$0 ca $dir' first" >&2; exit 1; }
  if [[ $kind == server ]]; then
    ((${#sans[@]})) || { echo "server: name the hosts clients dial (names or IP addresses)" >&2; exit 2; }
    ext="extendedKeyUsage=serverAuth
subjectAltName=$(IFS=,; echo "${sans[*]}")"
  else
    ext="extendedKeyUsage=clientAuth"
  fi
  ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
$ext"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$dir/$name.key" -out "$dir/$name.csr" -subj "/CN=$name" 2>/dev/null
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days "$days" -out "$dir/$name.pem" -extfile <(printf '%s\n' "$ext") 2>/dev/null
  rm -f "$dir/$name.csr"
  chmod 644 "$dir/$name.pem"
  echo "$dir/$name.pem, $dir/$name.key ($kind certificate of $name)"
  ;;
*) usage ;;
esac
