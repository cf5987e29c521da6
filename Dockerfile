# The lazygrpc image that servers/k8s/ runs: `make image` builds it as lazygrpc:latest.
# Every service is this image with its own arguments (`lazygrpc serve …`, `serve-model …`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
# The package's protos/ and docs/ are links to these (package data: the contract, and what
# the demo's markov model trains on).
COPY protos ./protos
COPY docs ./docs
COPY lazygrpc ./lazygrpc
RUN pip install '.[otel,redis,edge,metrics]' && rm -rf /src

# Non-root: a fixed uid, so that Kubernetes' runAsNonRoot can check it.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin lazygrpc
USER 10001
WORKDIR /home/lazygrpc

EXPOSE 50051
# Every service in servers/k8s listens on 50051; Kubernetes uses its own gRPC probes.
# `lazygrpc health` exits 2 when the call fails; Docker reserves 2, so anything but 0 is 1.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD lazygrpc health grpc://127.0.0.1:50051 --timeout 2 || exit 1

ENTRYPOINT ["lazygrpc"]
CMD ["serve-model", "--backend", "markov", "--host", "0.0.0.0", "--port", "50051"]
