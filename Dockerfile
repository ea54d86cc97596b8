# The ridpool daemon image. Its config is mounted, never baked in: `ridpool run -c /etc/ridpool/config.toml` by
# default (docker-compose.yml mounts config/compose.toml there); the same image runs `ridpool simulate` for the
# demo profile. Base image pinned to an exact version and every Python dependency to an exact version
# (deploy/constraints-daemon.txt): a rebuild gets the same Python and the same libraries.
FROM python:3.11.11-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md ./
COPY deploy/constraints-daemon.txt ./deploy/
COPY pool ./pool
COPY daemon ./daemon
# A numeric user (10001), so that Kubernetes' runAsNonRoot can check it (deploy/kubernetes/deployment.yaml).
RUN pip install --no-cache-dir -c deploy/constraints-daemon.txt '.[daemon]' \
    && groupadd --system --gid 10001 ridpool && useradd --system --uid 10001 --gid 10001 ridpool \
    && rm -rf /app/pool /app/daemon /app/deploy
USER 10001:10001
# The daemon's /healthz (its config needs `[metrics] port = 9464`, address "0.0.0.0"): 200 while it runs and
# reaches Redis. urlopen raises on a 503 or a refused connection, so the exit code says unhealthy.
EXPOSE 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=3)"]
ENTRYPOINT ["ridpool"]
CMD ["run", "-c", "/etc/ridpool/config.toml"]
