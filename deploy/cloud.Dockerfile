# Cloud service image, CPU. For GPUs, start FROM an nvidia/cuda runtime base (e.g. nvidia/cuda:12.x-cudnn-runtime)
# with python3.11, and install the CUDA torch wheel instead of torch==2.13.0's CPU build; the service picks CUDA and
# fp16 by itself when a GPU is visible.
# Build from the repository root: docker build -f deploy/cloud.Dockerfile -t whisper-fleet/cloud .
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY cloud_service ./cloud_service
COPY edge_node ./edge_node
COPY proto ./proto
COPY bench ./bench
# The project itself is installed from the build context; its dependencies are pinned in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --prefix=/install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install --no-cache-dir --prefix=/install '.[cloud]' \
 && pip install --no-cache-dir --prefix=/install --no-deps openai-whisper==20250625

FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends libsndfile1=1.2.* ffmpeg=7:5.1.* \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10002 --home-dir /var/lib/cloud --create-home cloud
COPY --from=build /install /usr/local
VOLUME ["/models"]
USER 10002
EXPOSE 50051
ENTRYPOINT ["cloud-service"]
CMD ["serve", "--listen", "0.0.0.0:50051", "--model", "/models/base.pt"]
