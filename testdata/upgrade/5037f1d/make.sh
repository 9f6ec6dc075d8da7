#!/usr/bin/env bash
# Makes this directory's fixture: the data luna-server left as released at
# 5037f1d (its schema: the first six migrations), on SQLite and on
# PostgreSQL. Run once, with that release's binary:
#   git worktree add /tmp/old 5037f1d && (cd /tmp/old && cargo build -p luna-server)
#   testdata/upgrade/5037f1d/make.sh /tmp/old/target/debug/luna-server
# luna-store's tests/upgrade.rs opens what it made with this build.
set -euo pipefail
old=$1
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
password=upgrade-admin-0001

# Serves DATA_DIR (and DATABASE_URL if given) with the old release, makes an
# AES key (with an Idempotency-Key), an RSA pair, a user and a refresh job,
# waits for them to end, and stops it. Writes the ids to $here/$name.ids.
make_data() {
  local name=$1 data=$2 url=${3:-}
  local port base jwt partition aes rsa job
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  LUNA_ADMIN_PASSWORD=$password "$old" serve --data-dir "$data" --insecure-http --listen "127.0.0.1:$port" \
    ${url:+--database-url "$url"} >"$work/$name.log" 2>&1 &
  local pid=$!
  base="http://127.0.0.1:$port/api/v1"
  for _ in $(seq 120); do curl -fs "$base/healthz" >/dev/null && break; sleep 0.5; done
  jwt=$(curl -fs "$base/auth/tokens" -H 'Content-Type: application/json' \
    -d "{\"grant_type\":\"password\",\"username\":\"admin\",\"password\":\"$password\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["jwt"])')
  auth=(-H "Authorization: Bearer $jwt" -H 'Content-Type: application/json')
  partition=$(curl -fs "${auth[@]}" "$base/cckm/hsm/luna/partitions?partition_label=demo-single" | python3 -c 'import json,sys; print(json.load(sys.stdin)["resources"][0]["id"])')
  aes=$(curl -fs "${auth[@]}" -H 'Idempotency-Key: upgrade-aes-1' "$base/cckm/hsm/luna/keys" \
    -d "{\"label\":\"upgrade-aes\",\"size\":256,\"partition_id\":\"$partition\",\"mechanism\":\"CKM_AES_KEY_GEN\",\"attributes\":[\"CKA_ENCRYPT\"]}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  rsa=$(curl -fs "${auth[@]}" "$base/cckm/hsm/luna/keys" \
    -d "{\"label\":\"upgrade-rsa\",\"size\":2048,\"partition_id\":\"$partition\",\"mechanism\":\"CKM_RSA_PKCS_KEY_PAIR_GEN\",\"attributes\":[\"CKA_SIGN\",\"CKA_VERIFY\"]}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  curl -fs "${auth[@]}" "$base/usermgmt/users" -d '{"username":"operator","password":"operator-password-1"}' >/dev/null
  sleep 2
  job=$(curl -fs "${auth[@]}" "$base/cckm/hsm/luna/refresh" -d "{\"partitions\":[\"$partition\"]}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  sleep 3
  kill -TERM "$pid"
  wait "$pid" || true
  printf 'partition %s\naes %s\nrsa %s\njob %s\n' "$partition" "$aes" "$rsa" "$job" >"$here/$name.ids"
}

mkdir -p "$here/sqlite" "$here/postgres"
make_data sqlite "$work/sqlite"
cp "$work/sqlite/luna.db" "$work/sqlite/pin.key" "$here/sqlite/"

db=luna_upgrade_fixture_$$
psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db"
make_data postgres "$work/postgres" "postgres://postgres@127.0.0.1:5432/$db"
pg_dump -h 127.0.0.1 -U postgres --no-owner --no-privileges --inserts "$db" | grep -v '^\\' >"$here/postgres/dump.sql"
cp "$work/postgres/pin.key" "$here/postgres/"
psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE $db"
