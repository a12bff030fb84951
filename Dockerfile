# syntax=docker/dockerfile:1
# watchdogd: two stages. The builder turns the source into wheels (watchdogd's
# and its dependencies'); the runtime installs them, with no compiler and no
# source tree, and runs as an unprivileged user.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY watchdogd ./watchdogd
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels watchdogd \
    && groupadd --system --gid 10001 watchdogd \
    && useradd --system --uid 10001 --gid watchdogd --home-dir /var/lib/watchdogd \
       --no-create-home --shell /usr/sbin/nologin watchdogd \
    && mkdir -p /etc/watchdogd /var/lib/watchdogd \
    && chown watchdogd:watchdogd /var/lib/watchdogd \
    && chmod 0750 /var/lib/watchdogd

# the config (and tokens file) come from a mount; the SQLite state lives in the volume
VOLUME ["/etc/watchdogd", "/var/lib/watchdogd"]
# in a container the API must listen on 0.0.0.0:9464 (server.listen) to be reached
EXPOSE 9464
USER 10001:10001
WORKDIR /var/lib/watchdogd

# slim has no curl: the probe is Python's own urllib; the port is the default one
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["watchdogd"]
CMD ["run", "--config", "/etc/watchdogd/watchdogd.yaml"]
