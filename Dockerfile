# The ridpool daemon image: `ridpool run -c /etc/ridpool/config.toml` by default; the same image runs
# `ridpool simulate` for the demo profile of docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pool ./pool
COPY daemon ./daemon
COPY config ./config
RUN pip install --no-cache-dir '.[daemon]' && useradd --system ridpool
USER ridpool
ENTRYPOINT ["ridpool"]
CMD ["run", "-c", "/app/config/example.toml"]
