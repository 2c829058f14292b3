# dbintel: one image for both roles.
#   docker build -t dbintel:0.1.0 .
#   docker run --rm dbintel:0.1.0 validate /etc/dbintel/config/config.yaml
# The Kubernetes manifests (deploy/kubernetes) run it as `coordinator` or `agent` with --config.

# --- build: install dbintel and its dependencies into a virtualenv --------------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/dbintel
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY services ./services
RUN /opt/dbintel/bin/pip install --no-compile . \
    && /opt/dbintel/bin/python -m compileall -q /opt/dbintel/lib

# --- runtime: the virtualenv only, run as a non-root user ----------------------------------------
FROM python:3.11-slim
# The numeric UID/GID match runAsUser/runAsGroup in deploy/kubernetes.
RUN groupadd --system --gid 10001 dbintel \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin dbintel
COPY --from=build /opt/dbintel /opt/dbintel
ENV PATH=/opt/dbintel/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# gRPC (coordinator), metrics, health.
EXPOSE 50051 8889 13133
ENTRYPOINT ["dbintel"]
CMD ["--help"]
