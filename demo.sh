#!/usr/bin/env bash
# Runs the gate daemon on simulated hardware: a SAM ID-card module and a
# Modbus RTU IO board from hw-sim on pseudo-terminals, a handful of demo
# identities, and cards presented one after another. Decisions show as they
# happen. Uses an MQTT broker on 127.0.0.1:1883 when one is reachable;
# without one, events queue in the outbox and the daemon says so.
#
# Everything lives in target/demo/; Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")"

cargo build --quiet --bins
bin=target/debug
demo=target/demo
rm -rf "$demo"
mkdir -p "$demo/state"
cp config/demo.toml "$demo/gated.toml"

"$bin/gatectl" keygen "$demo/site.key"
"$bin/gatectl" identity import --config "$demo/gated.toml" config/demo-people.csv

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

"$bin/hw-sim" gate --link "$demo/gate-io" &
pids+=($!)
"$bin/hw-sim" idcard --link "$demo/idcard" --script config/demo-cards.script &
pids+=($!)
for _ in $(seq 50); do
  [[ -e "$demo/gate-io" && -e "$demo/idcard" ]] && break
  sleep 0.1
done

echo "demo: starting gated (Ctrl-C to stop); state in $demo/"
"$bin/gated" --config "$demo/gated.toml" &
pids+=($!)
wait "${pids[-1]}"
