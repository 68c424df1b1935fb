# Sourced by the real-server stages (tests/vllm/stage.sh, tests/llm/stage.sh): each server runs in its own
# process group and is stopped by its PID whatever happens; waiting for one is bounded, and a server that
# dies or never answers ends the stage with the tail of its log. Needs WORK (the stage's temp folder, removed
# at exit; the servers log there); the stage adds each server's PID to PIDS after starting it.
PIDS=""
stop_servers() {
    local pid
    for pid in $PIDS; do
        kill -TERM -- "-$pid" 2>/dev/null || true  # its own process group (setsid): engine processes stop too
    done
    for pid in $PIDS; do
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap stop_servers EXIT
trap 'exit 130' INT TERM

# wait_for_server NAME URL TIMEOUT PID LOG: poll URL until it answers, at most TIMEOUT seconds
wait_for_server() {
    local name=$1 url=$2 timeout=$3 pid=$4 log=$5 start=$SECONDS
    echo "$name: pid $pid, log $log; waiting for $url (at most ${timeout}s)"
    until curl -sf "$url" > /dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited before $url answered; the last lines of its log:" >&2
        elif [ $((SECONDS - start)) -ge "$timeout" ]; then
            echo "$name did not answer $url within ${timeout}s; the last lines of its log:" >&2
        else
            sleep 1
            continue
        fi
        tail -n 40 "$log" >&2
        [ -s "$log" ] || echo "(the log is empty)" >&2
        exit 1
    done
    echo "$name ready after $((SECONDS - start))s"
}
