# Sourced by the scripts that try luna-cckm as an operator meets it
# (package-test, container-test, schemathesis): a free port, and a key made
# and read back through lunactl as the README shows.

# A TCP port free on 127.0.0.1 now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# LUNACTL=… makes an AES key labelled $2 on the demo-single partition,
# logged in with the admin password in file $1 (LUNACTL_SERVER and
# LUNACTL_CA_FILE name the server); prints its id once it is AVAILABLE.
demo_key() {
  "$LUNACTL" login <"$1" >/dev/null
  local partition
  partition=$("$LUNACTL" -o json partitions list | python3 -c '
import json, sys
print(next(p["id"] for p in json.load(sys.stdin)["resources"] if p["partition_label"] == "demo-single"))')
  "$LUNACTL" -o json keys create --partition-id "$partition" --mechanism CKM_AES_KEY_GEN --size 256 \
    --label "$2" --attribute CKA_ENCRYPT --wait 2>/dev/null | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])'
}

# The status of key $1, read through $LUNACTL.
key_status() {
  "$LUNACTL" -o json keys get "$1" | python3 -c 'import json, sys; print(json.load(sys.stdin)["status"])'
}
