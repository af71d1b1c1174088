# The tunnelop image: `tunnelop run` (the operator) and `tunnelop agent` (the relay agent,
# the sidecar of every relay pod). Relay pods run frps from the upstream image, not this one.
#
#   docker build -t ghcr.io/tunnelop/tunnelop:0.1.0 .
#
# Runs as an unprivileged numeric user with a read-only root filesystem: nothing is written
# outside /tmp (bytecode is compiled at build time), and no shell is needed at run time.

# Pinned to an exact tag; pin by digest in a release build with
# --build-arg PYTHON_IMAGE=python:3.11.12-slim-bookworm@sha256:<digest>.
ARG PYTHON_IMAGE=python:3.11.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps everything else out).
COPY pyproject.toml README.md ./
COPY operator ./operator
# A wheel, then a virtual environment holding it and its dependencies only (no pip, no
# build tools in the final image), its bytecode compiled now: the root filesystem is
# read-only at run time.
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python -m venv --without-pip /opt/tunnelop \
    && python -m pip --python /opt/tunnelop/bin/python install --no-cache-dir --no-compile /wheels/tunnelop-*.whl \
    && python -m compileall -q -j 0 /opt/tunnelop/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="tunnelop" \
      org.opencontainers.image.description="Kubernetes operator and relay agent for frp tunnel relays" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/tunnelop/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp
COPY --from=build /opt/tunnelop /opt/tunnelop
# 65532: the relay pods' user too (builders/relay.py); numeric, so the kubelet can check
# runAsNonRoot.
USER 65532:65532
ENTRYPOINT ["tunnelop"]
CMD ["run"]
