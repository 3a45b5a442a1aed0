# Edge node image: the `edge` extra only (onnxruntime, no torch, no openai-whisper).
# Built by scripts/docker/images.sh from its wheelhouse (deps/ and project/, see cloud.Dockerfile); no registry.
ARG BASE_IMAGE=whisper-fleet/python:bookworm

FROM ${BASE_IMAGE} AS deps
COPY deps /wheels
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps /wheels/*.whl

FROM ${BASE_IMAGE}
# No apt packages: the soundfile wheel bundles libsndfile (WAV/FLAC/Ogg/Opus). ffmpeg, for other input formats,
# is optional and left out to keep the device image small.
RUN useradd --system --uid 10001 --home-dir /var/lib/edge-node --create-home edge
COPY --from=deps /opt/venv /opt/venv
COPY project /wheels/project
RUN /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps /wheels/project/*.whl
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
# The signed model artifact is mounted or fetched over FetchModel; it is not baked into the image. The operator's
# public key is mounted at /etc/edge-node/operator.pub and passed with --operator-pubkey.
VOLUME ["/var/lib/edge-node", "/models"]
USER 10001
ENTRYPOINT ["edge-node"]
CMD ["--help"]
