#!/bin/sh
# The official image compiles Redis with protected mode off, so that other containers can connect
# without a password; Debian's build has it on. Turn it off the same way for `redis-server ...`
# (an option the user gives later on the command line still wins).
set -e
if [ "$1" = "redis-server" ]; then
  shift
  case "${1:-}" in
    -v|--version|-h|--help|--test-memory|--check-system) set -- redis-server "$@" ;;
    ""|-*) set -- redis-server --protected-mode no "$@" ;;
    *) conf="$1"; shift; set -- redis-server "$conf" --protected-mode no "$@" ;;
  esac
fi
exec "$@"
