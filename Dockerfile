# Container image of docspace-backup-exporter.
#
#   docker build -t docspace-backup-exporter .
#   docker run --rm -p 10057:10057 \
#     -v "$PWD/config.yaml:/etc/docspace-backup-exporter/config.yaml:ro" \
#     -v "$PWD/secrets:/run/secrets/docspace-backup-exporter:ro" docspace-backup-exporter
#   docker run --rm -p 10057:10057 docspace-backup-exporter --demo --web.listen-address=:10057
#
# Secrets never go into the image: mount the config and the API key files (api_key_file,
# token_file, password_file) at run time. .dockerignore only lets the sources below in.

# --- builder: the project and all its dependencies as wheels ---------------------------------
FROM python:3.11.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter/ exporter/
# The DocSpace simulator that --demo serves (imported only for --demo).
COPY docspace_simulator/ docspace_simulator/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- runtime ---------------------------------------------------------------------------------
FROM python:3.11.11-slim-bookworm

LABEL org.opencontainers.image.title="docspace-backup-exporter" \
      org.opencontainers.image.description="Prometheus exporter for ONLYOFFICE DocSpace backups" \
      org.opencontainers.image.source="https://github.com/docspace-backup-exporter/docspace-backup-exporter" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Only the wheels built above, offline (--no-index); the bind mount keeps them out of the layers.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index /wheels/*.whl \
 && groupadd --system --gid 65532 exporter \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin exporter \
 && mkdir -p /etc/docspace-backup-exporter

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532

EXPOSE 10057

# No curl in slim images: the standard library does the check. Assumes the default listen
# address (:10057) and no TLS/basic auth on /-/healthy (which the exporter never protects).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:10057/-/healthy', timeout=4)"]

ENTRYPOINT ["docspace-backup-exporter"]
CMD ["--config.file=/etc/docspace-backup-exporter/config.yaml"]
