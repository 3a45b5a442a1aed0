# Edge node image: the `edge` extra only (onnxruntime, no torch, no openai-whisper).
# Build from the repository root: docker build -f deploy/edge.Dockerfile -t whisper-fleet/edge .
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY edge_node ./edge_node
COPY proto ./proto
# The project itself is installed from the build context; its dependencies are pinned in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --prefix=/install '.[edge]'

FROM python:3.11-slim-bookworm
# No apt packages: the soundfile wheel bundles libsndfile (WAV/FLAC/Ogg/Opus). ffmpeg, for other input formats,
# is optional and left out to keep the device image small (expected ~350 MB: ~125 MB base + ~225 MB of packages,
# onnxruntime 78 MB and numpy 73 MB the largest).
RUN useradd --system --uid 10001 --home-dir /var/lib/edge-node --create-home edge
COPY --from=build /install /usr/local
# The signed model artifact is mounted or fetched over FetchModel; it is not baked into the image.
VOLUME ["/var/lib/edge-node", "/models"]
USER 10001
ENTRYPOINT ["edge-node"]
CMD ["--help"]
