# One image for every part of Eddy: `eddy controller|preloader|webhook|worker|sidecar ...`.
# Build, push, and point the manifests at it (docs/operations.md, "Building the image"):
#   docker build -t registry.example/eddy:0.1.0 . && docker push registry.example/eddy:0.1.0
#   cd manifests && kustomize edit set image ghcr.io/eddy/eddy=registry.example/eddy:0.1.0
# Runtime dependencies only: the sandbox (sandbox/), the benchmarks (bench/) and the SeaweedFS wheel
# (the `sandbox` extra) stay out; `eddy` skips subcommands whose module is absent (tests/test_image.py).
# The base is pinned by digest (python:3.11-slim, Debian; refresh with
# `docker buildx imagetools inspect python:3.11-slim` and update both FROM lines).

# -- build stage: wheels for everything pinned in requirements.lock (pyfuse3 compiles against libfuse3)
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7 AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential pkg-config libfuse3-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY eddy ./eddy
COPY eddy_cli ./eddy_cli
COPY webhook ./webhook
COPY sidecar ./sidecar
COPY preloader ./preloader
COPY worker ./worker
COPY controller ./controller
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c requirements.lock .

# -- runtime stage: the wheels, fuse3 for the sidecar's mount, no compiler
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends fuse3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels eddy \
 && rm -rf /wheels \
 && useradd --uid 65532 --no-create-home --shell /usr/sbin/nologin eddy
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# The sidecar needs root for FUSE (the webhook sets its securityContext); the other parts run as 65532.
USER 65532
ENTRYPOINT ["eddy"]
CMD ["--help"]
