# syntax=docker/dockerfile:1
# The mxn image: the gateway (`mxn serve`), the CLI, the embedded engine and Ray, in one virtualenv.
#
#   docker build -t mxn .                                    # CPU torch, with the demo model built in
#   docker build -t mxn --build-arg EXTRAS=ray .             # gateway only: no torch, no embedded engine
#   docker build -t mxn --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#
# The same image runs the gateway replicas and the Ray head of compose.yaml and the Helm chart.

ARG PYTHON=3.11

FROM python:${PYTHON}-slim AS build
# `local` is the embedded engine (torch + transformers); drop it for a gateway that only routes to upstreams.
ARG EXTRAS=local,ray
ARG TORCH=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/mxn
ENV PATH=/opt/mxn/bin:$PATH
# torch first, from the index of the build wanted: a bare `torch` from PyPI is the CUDA build of several GB.
RUN case ",${EXTRAS}," in *,local,*) pip install --index-url "${TORCH_INDEX}" "${TORCH}" ;; esac
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[${EXTRAS}]"

FROM python:${PYTHON}-slim
ARG EXTRAS=local,ray
RUN useradd --uid 10001 --create-home --home-dir /home/mxn mxn \
 && mkdir -p /var/lib/mxn /opt/mxn-data && chown mxn:mxn /var/lib/mxn /opt/mxn-data
COPY --from=build /opt/mxn /opt/mxn
ENV PATH=/opt/mxn/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MXN_HOST=0.0.0.0 \
    MXN_PORT=8000 \
    MXN_DATA_DIR=/opt/mxn-data \
    MXN_DATABASE_URL=sqlite+aiosqlite:////var/lib/mxn/mxn.db \
    HF_HUB_OFFLINE=1
USER mxn
# The zero-config demo model, built once here so that every container of the image serves the same weights.
RUN case ",${EXTRAS}," in *,local,*) mxn models create-demo ;; esac
# A SQLite store lives here when no MXN_DATABASE_URL is given; replicas share PostgreSQL instead.
VOLUME ["/var/lib/mxn"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['MXN_PORT']}/healthz\", timeout=2)"]
ENTRYPOINT ["mxn"]
CMD ["serve"]
