# rollback-bot: `docker build -t rollback-bot .` then run with the env vars from README.md and the policy
# mounted at /etc/rollback-bot/policy.yaml, e.g.
#   docker run -p 3000:3000 --env-file bot.env -v $PWD/policy.yaml:/etc/rollback-bot/policy.yaml:ro rollback-bot
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --uid 10001 --home-dir /var/lib/rollback-bot --create-home rollback-bot

WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY handlers ./handlers
COPY executors ./executors
# Runtime dependencies only: the `test` extra (full mlflow, pytest) stays out of the image.
RUN pip install --no-cache-dir . && rm -rf /src

# The default DATABASE_URL is a sqlite file in the working directory: keep it on a volume.
WORKDIR /var/lib/rollback-bot
VOLUME /var/lib/rollback-bot
USER rollback-bot

EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/healthz', timeout=4)"]

ENTRYPOINT ["rollback-bot"]
CMD ["serve", "--policy", "/etc/rollback-bot/policy.yaml", "--port", "3000"]
