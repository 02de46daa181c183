#!/bin/bash
# GPU work longer than one device call (10 minutes): start it in its own process session, then wait for it
# in as many calls as it needs; the machine stays warm as long as the calls follow each other.
#   bash ci/gpu/session.sh start [STEPS...]   # copies the checkout to /tmp/omni3-repo, runs ci/gpu/run-all.sh there
#   bash ci/gpu/session.sh wait SECONDS       # follows the job until it ends or SECONDS pass; $OUT gets the results
#   bash ci/gpu/session.sh follow SECONDS     # for fix-and-retry work: first restarts the job when the file
#                                             # .gpu-retry (carried; line 1 a token, line 2 the steps) changed, then
#                                             # waits as `wait` does, holding the machine SECONDS when the job is over;
#                                             # line 3 "harvest K" adds ci/gpu/prebuilt.sh harvest K
# Results: /tmp/omni3-gpu-out (logs, JUnit reports, run directories' metrics), packed into $OUT/gpu-out.tgz.
set -uo pipefail
JOB=/tmp/omni3-gpu-out
start_job() {
    rm -rf "$JOB" /tmp/omni3-repo && mkdir -p "$JOB" && cp -a . /tmp/omni3-repo
    # The job reads the checkout's copy: a later call re-syncs the working tree under it.
    (cd /tmp/omni3-repo && OUT="$JOB" setsid nohup bash -c "bash ci/gpu/run-all.sh $*; echo \$? > $JOB/exit-code" \
      > "$JOB/job.log" 2>&1 < /dev/null &)
    echo "started: ci/gpu/run-all.sh ${*:-(all steps)} ($(date -u +%H:%M:%S))"
}
wait_job() {
    local end=$((SECONDS + $1)) hold=$2
    while { [ ! -f "$JOB/exit-code" ] || [ "$hold" = yes ]; } && [ "$SECONDS" -lt "$end" ]; do sleep 5; done
    tail -c 8000 "$JOB/job.log"
    if [ -f "$JOB/exit-code" ]; then echo "== job finished, exit $(cat "$JOB/exit-code")"; else echo "== job still running"; fi
    [ -n "${OUT:-}" ] && tar czf "$OUT/gpu-out.tgz" -C "$JOB" . && cp "$JOB/job.log" "$OUT/job.log"
}
case "${1:-}" in
  start) shift; start_job "$@" ;;
  wait) wait_job "${2:-540}" no ;;
  follow)
    token=$(head -1 .gpu-retry 2>/dev/null)
    if [ -n "$token" ] && [ "$token" != "$(cat /tmp/omni3-gpu-token 2>/dev/null)" ]; then
      pkill -TERM -f "ci/gpu/run-all.sh" ; sleep 3; pkill -KILL -f "omni3_sft|ci/gpu/run-|pytest" ; sleep 1
      echo "$token" > /tmp/omni3-gpu-token
      # shellcheck disable=SC2046  # the steps are words
      start_job $(sed -n 2p .gpu-retry)
    fi
    wait_job "${2:-60}" "$([ -f "$JOB/exit-code" ] && echo yes || echo no)"
    # Line 3 "harvest K": also bring back part K of the compiled kit packages (ci/gpu/prebuilt.sh).
    read -r verb part < <(sed -n 3p .gpu-retry 2>/dev/null)
    if [ "${verb:-}" = harvest ] && [ -n "${OUT:-}" ]; then rm -f "$OUT/job.log"; bash ci/gpu/prebuilt.sh harvest "$part"; fi
    ;;
  *) echo "usage: $0 start [STEPS...] | wait SECONDS | follow SECONDS" >&2; exit 2 ;;
esac
