# One image for every role: the command picks it (sim, ingest, bridge, up, client, loadtest).
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proto proto
COPY marketdata marketdata
COPY bridge bridge
COPY web web
RUN pip install . && useradd --system --uid 10001 md
USER md

# Inside a container every role listens on all interfaces.
ENV MD_SIM_HOST=0.0.0.0 MD_BRIDGE_HOST=0.0.0.0
EXPOSE 8000 50051
ENTRYPOINT ["marketdata"]
CMD ["up", "--host", "0.0.0.0"]
