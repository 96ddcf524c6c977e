# A simple image for the daemon. Not built or tested in this project's CI (no Docker engine there).
FROM python:3.12-slim
RUN useradd --system --home /data trialwatcher && mkdir -p /data && chown trialwatcher /data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY watcher ./watcher
COPY templates ./templates
RUN pip install --no-cache-dir .
USER trialwatcher
WORKDIR /data
ENV WATCHER_CONFIG=/data/watcher.toml
# Mount a folder holding watcher.toml at /data; the database and outbox live there too.
VOLUME ["/data"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["watcher"]
CMD ["daemon"]
