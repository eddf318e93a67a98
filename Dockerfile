# orderwatch container image: `docker build -t orderwatch .`
# Runs `orderwatch run` as uid/gid 10001; config from a mounted file, secrets via the *_file
# keys (Docker/Kubernetes secrets), state on the /var/lib/orderwatch volume (it must be
# writable by uid 10001). See docs/operations.md "Run in a container".
#
# Admin HTTP (/healthz, /readyz, /metrics) listens on 127.0.0.1:9464 by default, which the
# HEALTHCHECK below reaches from inside the container. To scrape /metrics from outside, set
# ORDERWATCH_ADMIN__LISTEN=0.0.0.0:9464 (and admin.token_file, since POST /orders is there).

FROM python:3.12-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Dependencies from the lock only, each file checked against its hash (docs/install.md);
# the build backend too, from build.txt, so nothing unpinned is fetched to build the project.
COPY requirements/runtime.txt requirements/build.txt ./requirements/
RUN pip install --require-hashes -r requirements/build.txt \
    && pip install --prefix=/install --require-hashes -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY daemon ./daemon
# The project itself (not editable), without resolving anything: its dependencies are there.
# DL3013: `.` is the project, not a package from an index to pin.
# hadolint ignore=DL3013
RUN pip install --prefix=/install --no-deps --no-build-isolation .

FROM python:3.12-slim
COPY --from=build /install /usr/local
# tini as PID 1: it reaps what hook commands leave behind (`cmd &`, a group killed at its
# timeout), which would otherwise stay zombies of the daemon, and passes SIGTERM on.
# DL3008: Debian's stable tini; pinning its version would break with every point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 orderwatch \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
        --home-dir /var/lib/orderwatch --shell /usr/sbin/nologin orderwatch \
    && mkdir -p /var/lib/orderwatch /etc/orderwatch \
    && chown 10001:10001 /var/lib/orderwatch && chmod 0700 /var/lib/orderwatch
# Only the config's path: ORDERWATCH_<KEY> variables would beat what a mounted config says.
# The defaults (state in /var/lib/orderwatch, JSON logs off a terminal) suit the image.
ENV ORDERWATCH_CONFIG=/etc/orderwatch/orderwatch.yaml \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/orderwatch
VOLUME ["/var/lib/orderwatch"]
EXPOSE 9464
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["/usr/bin/tini", "--", "orderwatch"]
CMD ["run"]
