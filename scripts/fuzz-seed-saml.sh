#!/usr/bin/env bash
# Regenerates fuzz/corpus/saml_xml/pysaml2-*.xml: real pysaml2 responses
# (every sign mode) and every hostile variant of tests/peers/saml_idp.py
# (XML signature wrapping, DOCTYPE/entities, comments, oversize, ...), from
# the test IdP on 127.0.0.1. Needs the test peers (tests/peers/install.sh).
# The committed seeds came from this script; rerun it when the IdP changes.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-tests/peers/.venv/bin/python}"
out=fuzz/corpus/saml_xml
mkdir -p "$out"
work=$(mktemp -d)
cleanup() { [ -n "${idp:-}" ] && kill "$idp" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cat > "$work/idp.json" <<JSON
{"host": "127.0.0.1", "port": 0, "dir": "$work",
 "sps": [{"entity_id": "http://127.0.0.1:1/auth/saml/metadata",
          "acs_url": "http://127.0.0.1:1/auth/saml/acs"}],
 "users": {"alice": {"password": "pw", "name_id": "alice@acme.example",
   "attributes": {"email": ["alice@acme.example"], "roles": ["analyst", "viewer"]}}},
 "sign": "assertion", "assertion_ttl": 300}
JSON
"$py" tests/peers/saml_idp.py --config "$work/idp.json" > "$work/ready" 2> "$work/log" &
idp=$!
for _ in $(seq 100); do [ -s "$work/ready" ] && break; sleep 0.1; done
port=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' "$work/ready")
fetch() { # name json-spec
  curl -sf -X POST "http://127.0.0.1:$port/__test/response" -d "$2" \
    | "$py" -c 'import json,sys; sys.stdout.write(json.load(sys.stdin)["xml"])' > "$out/pysaml2-$1.xml"
}
for mode in assertion response both none; do
  fetch "sign-$mode" "{\"user\": \"alice\", \"sign\": \"$mode\"}"
done
for attack in tamper_name_id tamper_attribute xsw_before xsw_after xsw_wrap xsw_extensions \
  xsw_object duplicate_id xsw_response comment_in_name_id doctype_entity external_entity \
  billion_laughs wrong_cert_in_keyinfo; do
  fetch "$attack" "{\"user\": \"alice\", \"attack\": \"$attack\"}"
done
fetch oversize '{"user": "alice", "attack": "oversize", "size": 4096}'
ls "$out" | wc -l
