# The base of every whisper-fleet image: Debian bookworm (minbase, imported from debootstrap by
# scripts/docker/lib.sh, since no registry is reachable) with Python 3.11 and its venv module.
ARG DEBIAN_IMAGE=whisper-fleet/debian:bookworm
FROM ${DEBIAN_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3=3.11.* python3-venv=3.11.* ca-certificates=2023* \
 && rm -rf /var/lib/apt/lists/*
CMD ["python3"]
