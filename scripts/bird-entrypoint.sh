#!/bin/sh
# Entrypoint of the BIRD container in the PureLB agent pod (chart: bgp.enabled; docs/bgp.md).
# The agent writes BIRD's configuration to $PURELB_BIRD_DIR/bird.conf and drives BIRD over the
# control socket there. BIRD has no password-file option and the agent never reads Secrets:
# each key of the Secret mounted at /etc/purelb-bird/passwords becomes passwords/<key>.conf
# (`password "...";`), readable by BIRD only, which a BGPPeer's passwordSecretKey includes.
set -eu
dir="${PURELB_BIRD_DIR:-/run/purelb-bird}"
secrets="${PURELB_BIRD_SECRETS:-/etc/purelb-bird/passwords}"
umask 077
mkdir -p "$dir/passwords"
if [ -d "$secrets" ]; then
  for f in "$secrets"/*; do
    [ -f "$f" ] || continue
    key=$(basename "$f")
    # A BIRD string has no escapes: a value with a double quote or a line break inside cannot
    # be one. It is left out (the agent then reports the BGPPeer: its snippet is missing).
    value=$(cat "$f"; printf x)
    value=${value%x}
    value=${value%"
"}
    case "$value" in
      *'"'*|*"
"*)
        echo "purelb-bird: Secret key $key: a BGP password cannot contain a double quote or a line break; left out" >&2
        rm -f "$dir/passwords/$key.conf"
        continue ;;
    esac
    printf 'password "%s";\n' "$value" > "$dir/passwords/$key.conf.tmp"
    mv "$dir/passwords/$key.conf.tmp" "$dir/passwords/$key.conf"
  done
fi
umask 022
# Until the agent writes the real configuration: a router ID and nothing to announce.
if [ ! -s "$dir/bird.conf" ]; then
  case "${HOST_IP:-}" in
    *.*.*.*) id="$HOST_IP" ;;
    *) id=240.0.0.1 ;;
  esac
  printf 'router id %s;\nprotocol device { }\n' "$id" > "$dir/bird.conf"
fi
rm -f "$dir/drained"
exec bird -f -c "$dir/bird.conf" -s "$dir/bird.ctl"
