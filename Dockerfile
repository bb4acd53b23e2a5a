# The webhook image: ghcr.io/sidecar-injector/webhook
#   docker build -t ghcr.io/sidecar-injector/webhook:0.1.0 .
#
# Two stages so that pip, the wheel build and any compiler stay out of the
# image that runs in the cluster. Both stages use the same base, so the
# virtualenv's interpreter path (/usr/local/bin/python3.11) exists in the final one.
# Pin the base by digest in release builds for reproducibility.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# README.md is the package's long description; pyproject.toml needs it to build.
COPY pyproject.toml README.md constraints.txt ./
COPY webhook ./webhook
# A real wheel (not an editable install), runtime dependencies only: no test
# or dev extras reach the image, and each dependency at the version the tests
# passed with (constraints.txt). pip byte-compiles as it installs, which
# matters because the root filesystem is read-only at run time.
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --constraint constraints.txt /wheels/*.whl \
 && /opt/venv/bin/pip uninstall --yes pip

FROM python:3.11-slim
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Numeric, so the kubelet can check runAsNonRoot without an /etc/passwd entry;
# matches runAsUser/runAsGroup in manifests/base/deployment.yaml.
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["sidecar-injector", "serve"]
# The in-cluster defaults; the Deployment passes the same flags explicitly.
# 0.0.0.0 because the CLI binds 127.0.0.1 by default (right for `make run`).
CMD ["--host=0.0.0.0", "--port=8443", \
     "--cert-dir=/etc/sidecar-injector/tls", \
     "--config=/etc/sidecar-injector/config/config.yaml"]
