# The fleet image: one image for every role (migrate, dispatcher, worker, api, and the
# sim demo) picked by the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --user-group fleet

WORKDIR /app
# Every dependency exactly as locked and hash-checked, the same file scripts/setup installs,
# so every build is the same. It holds the sim and dev extras too: pip cannot take a part
# of a hashed lock, and one lock beats two that drift apart. The dev tools are installed
# but nothing runs them. Before the code, so this layer survives code changes.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY models/ models/
COPY migrations/ migrations/
COPY jobs/ jobs/
COPY watch/ watch/
COPY worker/ worker/
COPY sim/ sim/
COPY api/ api/
RUN pip install --no-cache-dir --no-deps . && pip check && rm -rf build ./*.egg-info

USER fleet
ENTRYPOINT ["fleet"]
CMD ["status"]
