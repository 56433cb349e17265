#!/usr/bin/env bash
#: Peak RSS of the daemon with 2,000,000 identities, and the snapshot's full
#: path through MQTT (protobuf decode, checks, staging, switch).
#
# Runs the release `gated` against a real Mosquitto with the simulated SAM
# reader and IO board (`hw-sim`), cards presented all along:
#   1. empty store; `hw-sim platform --generate N --once` publishes a snapshot
#      of N people in chunks of 5000; times it until the daemon logs the new
#      version; the daemon's VmHWM is read from /proc while it applies it;
#   2. the daemon restarted on the store now holding N identities, deciding
#      for 15 s: its VmHWM at rest.
# Needs mosquitto. `GATE_BENCH_PEOPLE` (default 2000000), `WORK` (default
# target/identity-rss) override.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${GATE_BENCH_PEOPLE:-2000000}
WORK=${WORK:-target/identity-rss}
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[ -x "$MOSQUITTO" ] || { echo "mosquitto is needed (apt-get install -y mosquitto)" >&2; exit 1; }

cargo build --release -p gated -p hw-sim
GATED=target/release/gated
HWSIM=target/release/hw-sim

rm -rf "$WORK"
mkdir -p "$WORK/state"
WORK=$(cd "$WORK" && pwd)
PORT=$((20000 + RANDOM % 20000))
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$WORK/site.key"
echo >> "$WORK/site.key"
chmod 600 "$WORK/site.key"
cat > "$WORK/gated.toml" <<EOF
[site]
id = "rss-site"

[gate]
id = "east-1"
lane = "pedestrian"
direction = "entry"

[store]
path = "$WORK/state/gated.db"

[mqtt]
host = "127.0.0.1"
port = $PORT
keep_alive_s = 30

[identity]
hmac_key_file = "$WORK/site.key"

[devices.id_card]
port = "$WORK/idcard"
poll_interval_ms = 300

[devices.gate]
driver = "modbus-rtu"
port = "$WORK/gate-io"
baud = 9600
unit_id = 1
unlock_entry_coil = 0
unlock_exit_coil = 1
unlock_mode = "pulse"
unlock_ms = 200
passage_entry_input = 0
passage_exit_input = 1
poll_interval_ms = 100
EOF

"$MOSQUITTO" -p "$PORT" > "$WORK/mosquitto.log" 2>&1 &
PIDS+=($!)
# Three people of the generated set (first, middle, last) and one stranger,
# presented in a loop the whole time.
"$HWSIM" idcard --link "$WORK/idcard" --hold-ms 800 --gap-ms 1200 --loop \
    --place 350203195001010001:陈建国 --place 350203197302220773:林秀英 \
    --place 350203197910041998:黄志强 --place 440524188001010014:某某 > "$WORK/idcard.log" 2>&1 &
PIDS+=($!)
"$HWSIM" gate --link "$WORK/gate-io" > "$WORK/gate.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -e "$WORK/idcard" ] && [ -e "$WORK/gate-io" ] && break; sleep 0.1; done

hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# 1. The snapshot through MQTT.
"$GATED" --config "$WORK/gated.toml" > "$WORK/gated-1.log" 2>&1 &
GATED_PID=$!
PIDS+=($GATED_PID)
for _ in $(seq 100); do grep -q "connected to the broker" "$WORK/gated-1.log" && break; sleep 0.1; done
echo "gated (pid $GATED_PID) up with an empty store: VmRSS $(rss_kb $GATED_PID) kB"
START=$(date +%s.%N)
"$HWSIM" platform --port "$PORT" --site rss-site --site-key "$WORK/site.key" \
    --generate "$N" --version 1 --chunk-size 5000 --once > "$WORK/platform.log" 2>&1 &
PLATFORM_PID=$!
PIDS+=($PLATFORM_PID)
MAX_RSS=0
until grep -q "identity table updated" "$WORK/gated-1.log"; do
    kill -0 "$GATED_PID" 2>/dev/null || { echo "gated died; see $WORK/gated-1.log" >&2; exit 1; }
    r=$(rss_kb $GATED_PID); [ "$r" -gt "$MAX_RSS" ] && MAX_RSS=$r
    if [ "$(echo "$(date +%s.%N) - $START > 600" | bc)" = 1 ]; then echo "no switch within 600 s" >&2; exit 1; fi
    sleep 0.2
done
END=$(date +%s.%N)
wait "$PLATFORM_PID" || true
grep "platform: snapshot" "$WORK/platform.log" || true
printf 'snapshot of %d people through MQTT: %.2f s from the first publish to the switch\n' "$N" "$(echo "$END - $START" | bc)"
echo "gated while applying it: VmHWM $(hwm_kb $GATED_PID) kB (sampled VmRSS max $MAX_RSS kB)"
sleep 5
echo "gated deciding on $N identities afterwards: VmRSS $(rss_kb $GATED_PID) kB, VmHWM $(hwm_kb $GATED_PID) kB"
kill -TERM "$GATED_PID"
wait "$GATED_PID" || true

# 2. A fresh daemon on the full store.
"$GATED" --config "$WORK/gated.toml" > "$WORK/gated-2.log" 2>&1 &
GATED_PID=$!
PIDS+=($GATED_PID)
sleep 15
DECISIONS=$(grep -c "decision seq=" "$WORK/gated-2.log" || true)
echo "gated restarted on $N identities, 15 s of cards ($DECISIONS decisions): VmRSS $(rss_kb $GATED_PID) kB, VmHWM $(hwm_kb $GATED_PID) kB"
ls -l "$WORK/state"
