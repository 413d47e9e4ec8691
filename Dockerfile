# Container recipe of the spine registry adapter daemon (docs/install.md, "Container").
#   docker build -t spine-registry-adapter .
#   docker run -d --name registry-adapter \
#     -v /etc/registry-adapter:/etc/registry-adapter:ro \
#     -v registry-data:/var/lib/registry-adapter \
#     --env-file /etc/registry-adapter/secrets.env \
#     -p 127.0.0.1:8080:8080 -p 2575:2575 spine-registry-adapter

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY adapters adapters
COPY mappings mappings
COPY registry_adapter registry_adapter
COPY registry_store registry_store
COPY registry_types registry_types
COPY review review
COPY scheduler scheduler
# The web extra: the review UI. The venv is copied whole into the runtime image, at the same
# path and on the same Python, so its scripts keep working there.
RUN python -m venv /opt/registry-adapter \
 && /opt/registry-adapter/bin/pip install --no-cache-dir '.[web]'

FROM python:3.11-slim
# A dedicated unprivileged user; its home is the data volume.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/registry-adapter \
      --create-home --shell /usr/sbin/nologin registry-adapter \
 && chmod 0700 /var/lib/registry-adapter
COPY --from=build /opt/registry-adapter /opt/registry-adapter
COPY config.example.yaml /etc/registry-adapter/config.example.yaml
ENV PATH=/opt/registry-adapter/bin:$PATH \
    REGISTRY_ADAPTER_CONFIG=/etc/registry-adapter/config.yaml \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER registry-adapter
WORKDIR /var/lib/registry-adapter
# SQLite store, generated keys, Bulk downloads: keep them on a volume (and back it up).
VOLUME ["/var/lib/registry-adapter"]
# Review UI (review.port) and MLLP listener (sources[].port), when configured.
EXPOSE 8080 2575
# Configuration readable and the registry store reachable and migrated.
HEALTHCHECK --interval=60s --timeout=20s --start-period=30s --retries=3 \
  CMD ["registry-adapter", "db", "current", "--check"]
ENTRYPOINT ["registry-adapter"]
CMD ["run"]
