# Keel: one image for every process; the command chooses which one runs:
#   docker run keel                          # keel serve all (SQLite in the data volume)
#   docker run keel serve gateway            # one process of a cluster (deploy/compose.yaml)
#   docker run keel migrate
# Linted with hadolint and checked by tests/deploy/test_image.py. Containers cannot run on
# Keel's development machines, so it is validated statically there (docs/deploy.md).

# A tag of the official image; pin its digest too where builds must be reproducible
# (docker buildx imagetools inspect python:3.11.12-slim-bookworm).
ARG PYTHON_IMAGE=python:3.11.12-slim-bookworm

# --- builder: Keel and its dependencies in a virtualenv at /opt/keel --------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_PREFER_BINARY=1
WORKDIR /src
RUN python -m venv /opt/keel
# Only what the package is built from (see [tool.setuptools.packages.find]).
COPY pyproject.toml ./
COPY gen/ gen/
COPY keel_app/ keel_app/
COPY service_kit/ service_kit/
COPY tenant_service/ tenant_service/
COPY gateway_bridge/ gateway_bridge/
COPY notification_service/ notification_service/
COPY file_service/ file_service/
RUN /opt/keel/bin/pip install ./
COPY deploy/healthcheck.py /opt/keel/healthcheck.py

# --- the image: Python, the virtualenv, a user; no compiler, no pip cache ----------------
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 keel \
    && useradd --system --uid 10001 --gid keel --home-dir /var/lib/keel --no-create-home \
       --shell /usr/sbin/nologin keel \
    && mkdir -p /var/lib/keel/data \
    && chown -R keel:keel /var/lib/keel
COPY --from=builder /opt/keel /opt/keel
# Listen on every interface of the container (Keel's defaults are 127.0.0.1); the data dir
# holds SQLite, local files and the secrets `keel serve all` generates.
ENV PATH=/opt/keel/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    KEEL_DATA_DIR=/var/lib/keel/data \
    KEEL_GRPC_ADDR=0.0.0.0:50051 \
    KEEL_WS_ADDR=0.0.0.0:8080 \
    KEEL_FILES_HTTP_ADDR=0.0.0.0:8090 \
    KEEL_METRICS_ADDR=0.0.0.0:9100
WORKDIR /var/lib/keel
VOLUME ["/var/lib/keel/data"]
USER 10001:10001
# gRPC, the bridge's WebSockets and HTTP, the file endpoints, Prometheus metrics.
EXPOSE 50051 8080 8090 9100
# grpc.health.v1 on KEEL_GRPC_ADDR, or a bridge's /healthz on KEEL_WS_ADDR (deploy/healthcheck.py).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/keel/healthcheck.py"]
ENTRYPOINT ["keel"]
CMD ["serve", "all"]
