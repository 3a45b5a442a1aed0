#!/usr/bin/env bash
# `make compose-test`: build the images (cached between runs), then bring the real stack up and drive it end to end
# from this host (tests/compose/). The pytest module makes this run's secrets, ports and folders under
# .cache/compose/, and ends with `docker-compose down -v`. The timeline is printed and kept in
# .cache/compose/timeline.txt, the services' logs in .cache/compose/logs.txt.
source "$(dirname "$0")/lib.sh"
t0=$(date +%s)
bash "$ROOT/scripts/docker/images.sh"
log "compose-test: images ready after $(( $(date +%s) - t0 )) s"
cd "$ROOT"
WHISPER_FLEET_COMPOSE=1 "$ROOT/.venv/bin/python" -m pytest tests/compose -p no:cacheprovider -q -s \
    -o addopts="" --timeout=1500 "$@"
log "compose-test: passed in $(( $(date +%s) - t0 )) s"
