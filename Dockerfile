# Container image for cts-import-exporter (and its simulated CTS: `simulate`).
# Build: docker build -t cts-import-exporter .   (podman/buildah: add --format docker to keep
# the HEALTHCHECK, which the OCI image format has no field for).

FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies first, from the lock only, so this layer is reused until the lock changes.
RUN python -m venv /opt/venv
COPY requirements.lock /src/requirements.lock
RUN /opt/venv/bin/pip install --require-hashes -r /src/requirements.lock

# The project itself: a wheel built with a hash-pinned backend in a throwaway environment, then
# installed without dependencies, so the runtime venv holds the lock and nothing else.
COPY deploy/container/build-system.lock /src/build-system.lock
RUN python -m venv /opt/build-env \
    && /opt/build-env/bin/pip install --require-hashes -r /src/build-system.lock
COPY pyproject.toml /src/
COPY exporter /src/exporter
RUN /opt/build-env/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /src/dist /src \
    && /opt/venv/bin/pip install --no-deps /src/dist/*.whl


FROM python:3.11-slim-bookworm

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="cts-import-exporter" \
      org.opencontainers.image.description="Prometheus exporter and alerting bridge for CDM Task Service job imports" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"

# A fixed numeric id, so Kubernetes can check runAsNonRoot without a user database.
RUN groupadd --gid 10001 exporter \
    && useradd --no-log-init --uid 10001 --gid exporter --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin exporter

COPY --from=build /opt/venv /opt/venv

# Bytecode was compiled at install time; nothing is written at run time, so the root
# filesystem can be mounted read-only.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The token itself never enters the image: this is the path of a mounted secret file.
# hadolint ignore=DL3064
ENV CTS_EXPORTER_CTS_TOKEN_FILE=/run/secrets/cts_token

USER 10001:10001
EXPOSE 9853

# Probes the port the exporter listens on: 9853 unless CTS_EXPORTER_LISTEN_ADDRESS moves it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('CTS_EXPORTER_LISTEN_ADDRESS', ':9853').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

ENTRYPOINT ["cts-import-exporter"]
