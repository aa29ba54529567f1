# One image for every role: the command picks it (sim, ingest, bridge, up, client, loadtest).
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proto proto
COPY marketdata marketdata
COPY bridge bridge
COPY web web
RUN pip install . \
    && groupadd --system --gid 10001 md \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin md
# Numeric, so that Kubernetes can check runAsNonRoot against the image without a passwd lookup.
USER 10001:10001

# Inside a container every role listens on all interfaces.
ENV MD_SIM_HOST=0.0.0.0 MD_BRIDGE_HOST=0.0.0.0
# 8000 bridge, 50051 simulator (gRPC), 9102 ingestor metrics
EXPOSE 8000 50051 9102
ENTRYPOINT ["marketdata"]
CMD ["up", "--host", "0.0.0.0"]
