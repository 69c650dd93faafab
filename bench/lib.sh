# Sourced by the benchmark scripts (after scripts/env.sh).

# cluster_peak_rss DIR: one line per process of the local cluster in DIR (the FUSE
# daemon, logic nodes, dataservers): its peak RSS so far (VmHWM).
cluster_peak_rss() {
  local dir=$1 name pid
  for name in $(cd "$dir" && ls fuse.pid logic-*.pid dataserver-*.pid 2>/dev/null | sed 's/\.pid$//'); do
    pid=$(cat "$dir/$name.pid")
    echo "rss $name peak_MiB=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$pid/status")"
  done
}
