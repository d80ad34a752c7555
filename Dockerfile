# wsrt image: the wheel built in one stage, installed into a slim runtime.
#   docker build -t ghcr.io/<org>/ws-realtime .
#   docker run -e WS_AUTH_SECRET=… -e WS_KAFKA_BROKERS=kafka:9092 -p 8080:8080 ghcr.io/<org>/ws-realtime

FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
RUN pip install --no-cache-dir build==1.2.2.post1
COPY pyproject.toml README.md ./
COPY wsrt ./wsrt
RUN python -m build --wheel --outdir /dist

FROM python:3.11.11-slim-bookworm
RUN groupadd --system --gid 10001 wsrt \
    && useradd --system --uid 10001 --gid wsrt --no-create-home --shell /usr/sbin/nologin wsrt
COPY --from=build /dist/ /tmp/dist/
# The wheel pins its dependencies to tested ranges in pyproject.toml.
RUN pip install --no-cache-dir /tmp/dist/*.whl && rm -rf /tmp/dist
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WS_BIND_ADDRESS=:8080
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["wsrt", "check", "--url", "ws://127.0.0.1:8080/ws", "--timeout", "3"]
ENTRYPOINT ["wsrt"]
CMD ["serve"]
