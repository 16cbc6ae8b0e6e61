# The fleet image: one image, three roles (migrate, dispatcher, worker) picked by the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --user-group fleet

WORKDIR /app
COPY pyproject.toml README.md ./
COPY models/ models/
COPY migrations/ migrations/
COPY jobs/ jobs/
COPY worker/ worker/
COPY sim/ sim/
COPY api/ api/
# EXTRAS=sim adds the simulator (moto, asyncssh, aiohttp) for `docker compose --profile sim`.
ARG EXTRAS=""
RUN pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}" && rm -rf build ./*.egg-info

USER fleet
ENTRYPOINT ["fleet"]
CMD ["status"]
