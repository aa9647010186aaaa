# The hub image: `hub serve` by default; the same image runs workers (`hub worker NAME`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src

# The sources the package is built from, and nothing else (see .dockerignore); README*
# is a pattern so that the build does not fail while there is no README.
COPY pyproject.toml README* ./
COPY hub ./hub
COPY workers ./workers
# hiredis and lupa ship manylinux wheels for 3.11, so slim needs no compiler. The sources
# go once installed: at run time only the installed package is importable.
RUN pip install . \
    && cd / && rm -rf /src

WORKDIR /app

# A fixed uid, so that volumes and Kubernetes securityContext can rely on it.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin hub
USER hub

EXPOSE 8000

# Ready means Redis answers and the live pub/sub is up, not merely that the port is open.
# slim has no curl: Python's urllib does the request (urlopen raises on non-2xx answers).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('HUB_PORT', '8000'), timeout=2)"]

# Listen on every interface of the container, whatever `hub serve` options are given.
# HUB_WORKERS=N runs N processes on the port, each with its own Redis connections.
ENV HUB_HOST=0.0.0.0

# Exec form: hub is PID 1 and receives SIGTERM itself, for a graceful drain of streams
# (with HUB_WORKERS > 1, the supervisor passes it on to every worker and reaps them).
CMD ["hub", "serve"]
