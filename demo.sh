#!/usr/bin/env bash
# Runs the gate daemon on simulated hardware: a SAM ID-card module and a
# Modbus RTU IO board from hw-sim on pseudo-terminals, four demo people, and
# five cards presented one after another. Decisions show as they happen.
# Uses an MQTT broker on 127.0.0.1:1883 when one is reachable; without one,
# events queue in the outbox and the daemon says so.
#
#   ./demo.sh              run until Ctrl-C
#   ./demo.sh --for 20     run 20 seconds, then stop cleanly (for scripts and CI)
#
# Works with or without CARGO_TARGET_DIR (the binaries are found where cargo
# puts them). The demo's state lives in target/demo/; Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")"

run_for=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --for)
      [[ $# -ge 2 && "$2" =~ ^[0-9]+$ && "$2" -gt 0 ]] || { echo "demo: --for needs a number of seconds" >&2; exit 64; }
      run_for="$2"
      shift 2
      ;;
    -h | --help)
      sed -n '2,12s/^# \{0,1\}//p' "$0"
      exit 0
      ;;
    *)
      echo "demo: unknown argument $1 (try --help)" >&2
      exit 64
      ;;
  esac
done

cargo build --quiet --bins
# Where cargo put the binaries: CARGO_TARGET_DIR, a config's build.target-dir,
# or ./target.
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin="${target_dir:-target}/debug"
demo=target/demo
rm -rf "$demo"
mkdir -p "$demo/state"
cp config/demo.toml "$demo/gated.toml"

"$bin/gatectl" keygen "$demo/site.key"
# The platform's signing key: the gate obeys only downlink messages signed
# with it (`hw-sim platform --signing-key target/demo/platform.key` speaks for
# the platform). The last line gate-platform prints is the gate's half.
platform_key_line=$("$bin/gate-platform" keygen "$demo/platform.key" | tail -1)
printf '\n[platform]\n# The demo platform key demo.sh generated (target/demo/platform.key).\nsigning_keys = ["%s"]\n' "$platform_key_line" >>"$demo/gated.toml"
"$bin/gatectl" identity import --config "$demo/gated.toml" config/demo-people.csv

sims=()
gated_pid=""
timer_pid=""
cleanup() {
  [[ -z "$timer_pid" ]] || kill "$timer_pid" 2>/dev/null || true
  # The daemon first, so its last coil writes still reach the IO board; the
  # simulators after it.
  if [[ -n "$gated_pid" ]]; then
    kill -TERM "$gated_pid" 2>/dev/null || true
    wait "$gated_pid" 2>/dev/null || true
  fi
  for pid in "${sims[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# In a session of their own, so Ctrl-C at the terminal reaches only the
# daemon and this script: the simulated board must outlive the daemon's
# last coil writes.
setsid "$bin/hw-sim" gate --link "$demo/gate-io" &
sims+=($!)
setsid "$bin/hw-sim" idcard --link "$demo/idcard" --script config/demo-cards.script &
sims+=($!)
for _ in $(seq 50); do
  [[ -e "$demo/gate-io" && -e "$demo/idcard" ]] && break
  sleep 0.1
done

if [[ -n "$run_for" ]]; then
  echo "demo: starting gated for ${run_for} s; state in $demo/"
else
  echo "demo: starting gated (Ctrl-C to stop); state in $demo/"
fi
"$bin/gated" --config "$demo/gated.toml" &
gated_pid=$!
if [[ -n "$run_for" ]]; then
  # Stops the daemon after the time asked; `wait` below then returns.
  (sleep "$run_for" && kill -TERM "$gated_pid" 2>/dev/null) &
  timer_pid=$!
fi
status=0
wait "$gated_pid" || status=$?
gated_pid=""
exit "$status"
