# orderwatch container image: `docker build -t orderwatch .`
# Runs `orderwatch run` as a non-root user; config from a mounted file, secrets via *_file
# (e.g. Docker/Kubernetes secrets), state on a volume. See README "Run in a container".
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon ./daemon
# DL3013: this installs the project itself; its pyproject bounds the dependencies.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --prefix=/install ".[postgres]"

FROM python:3.12-slim
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --home-dir /var/lib/orderwatch --shell /usr/sbin/nologin orderwatch \
    && mkdir -p /var/lib/orderwatch /etc/orderwatch \
    && chown orderwatch /var/lib/orderwatch && chmod 0700 /var/lib/orderwatch
ENV ORDERWATCH_CONFIG=/etc/orderwatch/orderwatch.yaml \
    ORDERWATCH_STATE_DIR=/var/lib/orderwatch \
    ORDERWATCH_OUTPUT_DIR=/var/lib/orderwatch/orders \
    ORDERWATCH_LOGGING__FORMAT=json \
    PYTHONUNBUFFERED=1
USER 10001
VOLUME ["/var/lib/orderwatch"]
EXPOSE 9464
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["orderwatch"]
CMD ["run"]
