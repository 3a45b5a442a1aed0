# Mosquitto 2 from Debian on the local base image (no registry). Runs as uid 10003, which owns its secrets.
ARG BASE_IMAGE=whisper-fleet/python:bookworm
FROM ${BASE_IMAGE}
# The user exists before the package, so the package keeps its fixed uid.
RUN useradd --system --uid 10003 --home-dir /var/lib/mosquitto --create-home mosquitto \
 && apt-get update \
 && apt-get install -y --no-install-recommends mosquitto=2.0.* mosquitto-clients=2.0.* \
 && rm -rf /var/lib/apt/lists/*
USER 10003
EXPOSE 8883
ENTRYPOINT ["mosquitto"]
CMD ["-c", "/etc/mosquitto/fleet/mosquitto.conf"]
