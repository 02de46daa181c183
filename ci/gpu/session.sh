#!/bin/bash
# GPU work longer than one device call (10 minutes): start it in its own process session, then wait for it
# in as many calls as it needs; the machine stays warm as long as the calls follow each other.
#   bash ci/gpu/session.sh start [STEPS...]   # copies the checkout to /tmp/omni3-repo, runs ci/gpu/run-all.sh there
#   bash ci/gpu/session.sh wait SECONDS       # follows the job until it ends or SECONDS pass; $OUT gets the results
# Results: /tmp/omni3-gpu-out (logs, JUnit reports, run directories' metrics), packed into $OUT/gpu-out.tgz.
set -uo pipefail
JOB=/tmp/omni3-gpu-out
case "${1:-}" in
  start)
    shift
    rm -rf "$JOB" /tmp/omni3-repo && mkdir -p "$JOB" && cp -a . /tmp/omni3-repo
    # The job reads the checkout's copy: a later call re-syncs the working tree under it.
    (cd /tmp/omni3-repo && OUT="$JOB" setsid nohup bash -c "bash ci/gpu/run-all.sh $*; echo \$? > $JOB/exit-code" \
      > "$JOB/job.log" 2>&1 < /dev/null &)
    echo "started: ci/gpu/run-all.sh ${*:-(all steps)} ($(date -u +%H:%M:%S))"
    ;;
  wait)
    end=$((SECONDS + ${2:-540}))
    while [ ! -f "$JOB/exit-code" ] && [ "$SECONDS" -lt "$end" ]; do sleep 5; done
    tail -c 8000 "$JOB/job.log"
    if [ -f "$JOB/exit-code" ]; then echo "== job finished, exit $(cat "$JOB/exit-code")"; else echo "== job still running"; fi
    [ -n "${OUT:-}" ] && tar czf "$OUT/gpu-out.tgz" -C "$JOB" . && cp "$JOB/job.log" "$OUT/job.log"
    ;;
  *) echo "usage: $0 start [STEPS...] | wait SECONDS" >&2; exit 2 ;;
esac
