# The Kubestep image: the `kubestep` command with the operator extra (kopf) and the Postgres step
# store's driver (asyncpg, for `KUBESTEP_STEP_STORE=postgres`), and the HTTP API.
# The chart runs it as `kubestep operator ...` and `kubestep worker MODULE ...`; `kubestep server`
# serves the API (docs/api.md).
#
#   docker build -t kubestep:dev .
#
# Your workflows: build FROM this image and add your module under /app (the
# worker puts its working directory on sys.path), or pip install your package:
#
#   FROM kubestep:dev
#   COPY myflows.py /app/
#   # then in the chart: workers: [{name: flows, module: myflows, image: {...}}]
#
# Runs as the numeric non-root user 10001 and needs no writable path but /tmp,
# so it works with readOnlyRootFilesystem: true (the chart mounts an emptyDir
# at /tmp).

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: the kubestep wheel and wheels of all its dependencies ------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sdk ./sdk
COPY operator ./operator
COPY server ./server
# Not dev/: the local control plane's tooling (`kubestep_dev`, for `kubestep dev` on a workstation) is
# no part of the runtime. .dockerignore keeps it out of the context and hatchling skips the absent
# package, so the wheel built here has none of it; its `dev` entry point stays registered and the
# CLI skips a command whose package is not installed.
RUN pip wheel --wheel-dir /wheels '.[operator,postgres]'

# ---- runtime -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONNOUSERSITE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    USER=kubestep
# kopf names its operator identity after getpass.getuser(), which fails for a
# uid without a passwd entry unless $USER is set: both are provided, so an
# arbitrary runAsUser works too. The wheels are bind-mounted (BuildKit), so
# they add no layer to the image. The build fails if the dev tooling got in
# after all, if the server or its UI's files did not, or if the CLI does not load without the tooling.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels 'kubestep[operator,postgres]' \
 && ! python3 -c 'import kubestep_dev' 2>/dev/null \
 && python3 -c 'import kubestep_server.app' \
 && python3 -c 'import kubestep_server.ui as u; assert (u.STATIC / "index.html").is_file(), "the UI is missing"' \
 && kubestep --help >/dev/null \
 && groupadd --gid 10001 kubestep \
 && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin kubestep \
 && mkdir -p /app
WORKDIR /app
USER 10001:10001
ENTRYPOINT ["kubestep"]
CMD ["--help"]
