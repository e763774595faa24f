# rollback-bot: `docker build -t rollback-bot .` then run with the env vars from README.md and the policy
# mounted at /etc/rollback-bot/policy.yaml (and a kubeconfig via KUBECONFIG, unless it runs in the cluster), e.g.
#   docker run -p 3000:3000 --env-file bot.env -v $PWD/policy.yaml:/etc/rollback-bot/policy.yaml:ro rollback-bot
# helm for the `helm` rollback step, copied from the official image of the release you run (HELM_IMAGE).
ARG HELM_IMAGE=alpine/helm:3.16.2
FROM ${HELM_IMAGE} AS helm

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# git for the `git_revert` step (GitPython drives the git executable).
RUN apt-get update && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=helm /usr/bin/helm /usr/local/bin/helm

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
