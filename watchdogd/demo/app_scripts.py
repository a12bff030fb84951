"""Shell scripts of the test app image (busybox sh + awk + httpd).

The app is stateless: ``/app/start`` records when it started, and the CGI
scripts derive every counter from the uptime, so counters only ever grow and
the error ratio over any window is ``ERROR_RATIO``.
"""

from __future__ import annotations

# Entry point (CMD). PID 1 of the container.
START = r"""#!/bin/sh
# Entry point of the test app: records its start, optionally prints a log line
# every LOG_EVERY seconds and exits 1 after CRASH_AFTER seconds, and serves
# /www with busybox httpd on 127.0.0.1:$PORT.
#
# httpd runs as a child rather than being exec'd: as PID 1 it would ignore
# SIGTERM and every "docker stop" would wait for the 10 s kill timeout. This
# shell traps SIGTERM/SIGINT, stops httpd and exits 0 at once.
: "${PORT:=8080}"
: "${APP_VERSION:=unknown}"
: "${LOG_LINE:=}"
: "${LOG_EVERY:=1}"
: "${CRASH_AFTER:=}"

mkdir -p /run/app
read -r up _ </proc/uptime
echo "$up" >/run/app/start_uptime
date +%s >/run/app/started_at

echo "app ${APP_VERSION} starting on 127.0.0.1:${PORT}"

children=""
stop() {
  # shellcheck disable=SC2086
  [ -n "$children" ] && kill $children 2>/dev/null
  exit "$1"
}
trap 'echo "app ${APP_VERSION}: stopping"; stop 0' TERM INT
trap 'echo "app ${APP_VERSION}: crashing after ${CRASH_AFTER}s" >&2; stop 1' USR1

if [ -n "$LOG_LINE" ]; then
  (
    trap - TERM INT USR1
    while :; do
      echo "$LOG_LINE"
      sleep "$LOG_EVERY"
    done
  ) &
  children="$children $!"
fi

if [ -n "$CRASH_AFTER" ]; then
  main=$$
  (
    trap - TERM INT USR1
    sleep "$CRASH_AFTER"
    kill -USR1 "$main"
  ) &
  children="$children $!"
fi

busybox httpd -f -p "127.0.0.1:${PORT}" -h /www &
httpd=$!
children="$children $httpd"

# wait returns early when a trapped signal arrives; the trap then exits.
wait "$httpd"
status=$?
echo "app ${APP_VERSION}: httpd exited with status $status" >&2
stop "$status"
"""

# GET /cgi-bin/metrics: Prometheus text exposition format 0.0.4.
METRICS = r"""#!/bin/sh
# Counters are functions of the uptime (see /app/start), so they grow
# monotonically and their ratios match the configured ones over any window.
read -r now _ </proc/uptime
start=$(cat /run/app/start_uptime 2>/dev/null) || start=$now
started_at=$(cat /run/app/started_at 2>/dev/null) || started_at=0

printf 'Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n\r\n'
exec awk \
  -v now="$now" -v start="$start" -v started_at="$started_at" \
  -v version="${APP_VERSION:-unknown}" \
  -v rps="${RPS:-0}" -v error_ratio="${ERROR_RATIO:-0}" \
  -v slow_fraction="${LATENCY_SLOW_FRACTION:-0}" \
  -v slow_seconds="${LATENCY_SLOW_SECONDS:-2}" \
  -v fast_seconds="${LATENCY_FAST_SECONDS:-0.03}" \
  -v queue_depth="${QUEUE_DEPTH:-0}" -v queue_growth="${QUEUE_GROWTH:-0}" '
BEGIN {
  up = now - start
  if (up < 0) up = 0
  total = int(up * rps + 1e-9)
  errors = int(total * error_ratio + 1e-9)
  if (errors > total) errors = total
  slow = int(total * slow_fraction + 1e-9)
  if (slow > total) slow = total
  fast = total - slow

  print "# HELP http_requests_total Requests handled, by status code."
  print "# TYPE http_requests_total counter"
  printf "http_requests_total{code=\"200\"} %.0f\n", total - errors
  printf "http_requests_total{code=\"500\"} %.0f\n", errors

  print "# HELP http_request_duration_seconds Request latency."
  print "# TYPE http_request_duration_seconds histogram"
  n = split("0.05 0.1 0.25 0.5 1 2.5", les, " ")
  for (i = 1; i <= n; i++) {
    c = 0
    if (fast_seconds + 0 <= les[i] + 0) c += fast
    if (slow_seconds + 0 <= les[i] + 0) c += slow
    printf "http_request_duration_seconds_bucket{le=\"%s\"} %.0f\n", les[i], c
  }
  printf "http_request_duration_seconds_bucket{le=\"+Inf\"} %.0f\n", total
  printf "http_request_duration_seconds_sum %.6f\n", fast * fast_seconds + slow * slow_seconds
  printf "http_request_duration_seconds_count %.0f\n", total

  print "# HELP app_info Version of the running app."
  print "# TYPE app_info gauge"
  printf "app_info{version=\"%s\"} 1\n", version

  print "# HELP import_queue_depth Jobs waiting in the import queue."
  print "# TYPE import_queue_depth gauge"
  printf "import_queue_depth %.0f\n", queue_depth + int(up * queue_growth + 1e-9)

  print "# HELP process_start_time_seconds Start time of the app since unix epoch."
  print "# TYPE process_start_time_seconds gauge"
  printf "process_start_time_seconds %.0f\n", started_at
}'
"""

# GET /cgi-bin/health: 200 "ok", or 500 when UNHEALTHY is set or the flag file
# /run/app/unhealthy exists (``docker exec <c> touch /run/app/unhealthy``).
HEALTH = r"""#!/bin/sh
unhealthy=0
case "${UNHEALTHY:-0}" in
  1 | true | yes) unhealthy=1 ;;
esac
[ -e /run/app/unhealthy ] && unhealthy=1

if [ "$unhealthy" = 1 ]; then
  printf 'Status: 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\nunhealthy'
else
  printf 'Content-Type: text/plain\r\n\r\nok'
fi
"""

# Path inside the image -> script text. All are installed with mode 0755.
SCRIPTS: dict[str, str] = {
    "app/start": START,
    "www/cgi-bin/metrics": METRICS,
    "www/cgi-bin/health": HEALTH,
}
