#!/bin/sh
# labpipe container entry point: the first argument is the role.
#
#   migrate            create or upgrade the database schema, then exit (run once per release)
#   watch              the inbox watcher (one per deployment)
#   worker [OPTIONS]   a worker (scale these: `docker compose up --scale worker=4`)
#   serve              watcher + worker(s) in one container (embedded: SQLite, no Redis)
#   api [OPTIONS]      the HTTP API and web UI
#   status [--json]    queue depth, images per state, failures, throughput
#   anything else      run as a command (e.g. `sh`)
set -eu

role="${1:-serve}"
[ "$#" -gt 0 ] && shift

case "$role" in
    migrate)
        exec labpipe db upgrade "$@"
        ;;
    api)
        exec labpipe api --host 0.0.0.0 --port "${LABPIPE_API_PORT:-8000}" "$@"
        ;;
    watch | worker | serve | status | process | counts | config)
        exec labpipe "$role" "$@"
        ;;
    *)
        exec "$role" "$@"
        ;;
esac
