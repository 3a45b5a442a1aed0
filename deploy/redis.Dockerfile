# Redis from Debian on the local base image (no registry). Runs as uid 10004, which owns its config (password).
ARG BASE_IMAGE=whisper-fleet/python:bookworm
FROM ${BASE_IMAGE}
RUN useradd --system --uid 10004 --home-dir /var/lib/redis --create-home redis \
 && apt-get update \
 && apt-get install -y --no-install-recommends redis-server=5:7.0.* \
 && rm -rf /var/lib/apt/lists/*
USER 10004
EXPOSE 6379
ENTRYPOINT ["redis-server"]
CMD ["/etc/redis/fleet/redis.conf"]
