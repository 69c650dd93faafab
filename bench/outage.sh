#!/usr/bin/env bash
# GPU-minutes report: what each outage (or rolling restart) costs a training job that reads and writes
# continuously. For each scenario, a fresh local cluster (`cairnctl local up`, release
# build: 4 halls, 8 dataservers, 2 logic nodes, 4+2) runs `cairn-bench outage`: 4 writers
# and 4 readers through the Rust client, every acknowledged file checked by crc32c at the
# end; the outage is staged after BEFORE seconds, lasts DOWN seconds, and the workload
# runs AFTER seconds more once the cluster is whole.
#   hall-loss    SIGKILL every process of the hall holding the metadata leader
#   power-loss   SIGKILL every process; start them all again (a crash: the kernel keeps
#                what they wrote)
#   site-power-cut  a real power cut of every hall (cluster on power-cut disks,
#                `cairnctl local up --power-cut-harness`): processes frozen, every
#                unsynced write and directory change dropped, processes killed; all
#                started again
#   logic-crash  SIGKILL one logic node; start it again
#   rolling-restart  cairnctl rolling-restart: every node stopped (SIGTERM) and started in
#                turn, each once the cluster is healthy (DOWN unused)
#   dataserver-loss  SIGKILL one dataserver and declare it lost (`cairnctl drain`): the
#                dataservers rebuild its shards elsewhere at their default pace (DOWN unused);
#                printed: shards rebuilt, the time to full redundancy, and the workload's
#                MiB/s before the loss and during the rebuild
# Printed per scenario: failed I/Os, the longest gap between successful I/Os, that gap
# times 100,000 GPUs, the time until every node is back, and for power loss the time from
# the processes' start to the first read and to full service.
# Run from the repository root:  bench/outage.sh     (env: BEFORE=10 DOWN=20 AFTER=10 SCENARIOS=...)
source "$(dirname "$0")/../scripts/env.sh"
source "$(dirname "$0")/lib.sh"
BEFORE="${BEFORE:-10}" DOWN="${DOWN:-20}" AFTER="${AFTER:-10}"
SCENARIOS="${SCENARIOS:-hall-loss power-loss site-power-cut logic-crash rolling-restart dataserver-loss}"
bench_begin outage
cleanup() { "$BIN/cairnctl" local down --dir "$DATA/cluster" >/dev/null 2>&1 || true; }
trap cleanup EXIT

summary() {
  python3 -c '
import json, sys
r = json.loads(sys.stdin.read()); w = r["workload"]
def f(v): return "-" if v is None else "%.2f" % v
print("outage %s failed_ios=%d ios=%d longest_gap_s=%.2f gpu_minutes_per_100k=%.0f whole_after_s=%.2f first_read_after_start_s=%s full_service_after_start_s=%s files_verified=%d bytes_verified=%d killed=%s" % (
    r["scenario"], w["failed_ios"], w["writes_ok"] + w["reads_ok"], w["longest_gap_s"], r["gpu_minutes_per_100k"],
    r["full_redundancy_s"], f(r["first_read_after_start_s"]), f(r["full_service_after_start_s"]),
    w["files_verified"], w["bytes_verified"], ",".join(r["killed"])))
for h in r.get("handed_over", []):
    print("  leadership handed over: %s" % h)
b = r.get("rebuild")
if b:
    print("  rebuild shards=%d seconds=%.2f foreground_mib_s_before=%.1f foreground_mib_s_during=%.1f (%.0f%%)" % (
        b["shards"], b["seconds"], b["foreground_mib_s_before"], b["foreground_mib_s_during"],
        100.0 * b["foreground_mib_s_during"] / max(b["foreground_mib_s_before"], 1e-9)))'
}

for scenario in $SCENARIOS; do
  log "$scenario"
  cleanup
  rm -rf "$DATA/cluster"
  harness=()
  [ "$scenario" = site-power-cut ] && harness=(--power-cut-harness)
  "$BIN/cairnctl" local up --dir "$DATA/cluster" --base-port 17600 --no-mount "${harness[@]}" >/dev/null
  down="$DOWN"
  [ "$scenario" = hall-loss ] || down=5
  "$BIN/cairn-bench" outage --scenario "$scenario" --dir "$DATA/cluster" \
    --before-secs "$BEFORE" --down-secs "$down" --after-secs "$AFTER" | tee "$DATA/$scenario.json" | summary | tee -a "$RESULTS" ||
    echo "outage $scenario FAILED: an I/O failed or acknowledged data was lost (see $DATA/$scenario.json)" | tee -a "$RESULTS"
done
cleanup
rm -rf "$DATA/cluster"
