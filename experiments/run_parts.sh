#!/usr/bin/env bash
# Run the parts of a long experiment one after another (one experiment process at a time, one thread), each with
# its own log, and commit each part's results as soon as it finishes.
#
#   nohup bash experiments/run_parts.sh experiments/text/parts.txt .runs/text > /dev/null 2>&1 &
#
# A part is a line `name | results path to commit | command` of the queue file (`#` comments and blank lines
# skipped); the command runs from the repository root and should use --resume, so a part that was stopped
# continues where it was. STATE_DIR holds driver.log, one log per part and `done` (the parts finished, with their
# status). The queue is read again before every part, so parts can be added or reordered while it runs; a failed
# part is logged and skipped. Stop it with `kill <driver pid>` (the running part is stopped with it).
set -u
queue=$(realpath "$1")
state=$(mkdir -p "$2" && realpath "$2")
root=$(git -C "$(dirname "$queue")" rev-parse --show-toplevel)
cd "$root" || exit 1
touch "$state/done"
child=""
trap '[ -n "$child" ] && kill "$child" 2>/dev/null; echo "$(date "+%F %T") driver stopped" >> "$state/driver.log"; exit 143' TERM INT
echo "$(date '+%F %T') driver $$ started on $queue" >> "$state/driver.log"

next_part() {  # the first part of the queue not in done
    grep -v '^[[:space:]]*#' "$queue" | grep -v '^[[:space:]]*$' | while IFS='|' read -r name path cmd; do
        name=$(echo "$name" | xargs)
        if ! cut -d' ' -f1 "$state/done" | grep -qxF "$name"; then
            echo "$name|$(echo "$path" | xargs)|$cmd"
            break
        fi
    done
}

commit() {  # commit the part's results (retry while another git command holds the index)
    local name=$1 path=$2 msg=$3
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        if git add -A -- "$path" 2>>"$state/driver.log"; then
            if git diff --cached --quiet -- "$path"; then return 0; fi
            git commit -q -m "$msg" -- "$path" >>"$state/driver.log" 2>&1 && return 0
        fi
        sleep 30
    done
    echo "$(date '+%F %T') could not commit $path for $name" >> "$state/driver.log"
}

while true; do
    line=$(next_part)
    [ -z "$line" ] && break
    IFS='|' read -r name path cmd <<< "$line"
    echo "$(date '+%F %T') start $name: $cmd" >> "$state/driver.log"
    start=$(date +%s)
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 bash -c "$cmd" > "$state/$name.log" 2>&1 &
    child=$!
    wait "$child"
    rc=$?
    child=""
    minutes=$(( ($(date +%s) - start) / 60 ))
    if [ "$rc" -eq 0 ]; then
        echo "$name ok ${minutes}min" >> "$state/done"
        echo "$(date '+%F %T') done $name (${minutes} min)" >> "$state/driver.log"
        commit "$name" "$path" "Experiment part $name finished (${minutes} min at one thread): results in $path"
    else
        echo "$name failed-rc$rc ${minutes}min" >> "$state/done"
        echo "$(date '+%F %T') FAILED $name rc=$rc after ${minutes} min, see $state/$name.log" >> "$state/driver.log"
    fi
done
echo "$(date '+%F %T') driver $$ finished: queue empty" >> "$state/driver.log"
