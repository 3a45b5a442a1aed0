# Cloud service image, CPU: `cloud-service serve` and `cloud-service worker` (and fleetctl).
# Built by scripts/docker/images.sh with the wheelhouse it prepares as the build context (deps/: every dependency
# as a wheel, torch==2.13.0's CPU build and openai-whisper included; project/: this project's wheel), so the build
# needs no network beyond the Debian mirror, and no registry: BASE_IMAGE is the locally built Debian + Python.
# For GPUs, install the CUDA torch wheel in deps/ instead; the service picks CUDA and fp16 by itself.
ARG BASE_IMAGE=whisper-fleet/python:bookworm

FROM ${BASE_IMAGE} AS deps
COPY deps /wheels
# --no-deps: the wheelhouse is the complete, resolved set (openai-whisper's triton requirement is left out on CPU).
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps /wheels/*.whl

FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends libsndfile1=1.2.* ffmpeg=7:5.1.* \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10002 --home-dir /var/lib/cloud --create-home cloud
COPY --from=deps /opt/venv /opt/venv
COPY project /wheels/project
RUN /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps /wheels/project/*.whl
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
VOLUME ["/models"]
USER 10002
EXPOSE 50051
ENTRYPOINT ["cloud-service"]
CMD ["serve", "--listen", "127.0.0.1:50051", "--model", "/models/base.pt"]
