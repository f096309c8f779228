# fleet-ingest: `python -m worker run` starts the KCL MultiLangDaemon (Java), which starts one
# `python -m worker process` child per shard lease it holds.
#
# Two stages on the same Python base, so the virtualenv built in the first runs unchanged in the second:
#   build    builds upstream amazon-kclpy (its setup.py downloads the KCL 3.x jars from Maven Central into
#            the package) and installs this project into /opt/venv. No compiler or JDK is needed: every
#            dependency ships wheels, and the jars are downloaded, not built.
#   runtime  the same slim base + Debian's headless JRE 17 + /opt/venv. No pip, no build tools, no sources.
#
# Build context: see .dockerignore (an allowlist). Build: docker build -t fleet-ingest .

FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv

# amazon-kclpy is published as an sdist only. Its setup.py fetches the jars in a bdist_wheel hook that
# silently does nothing when `wheel` cannot be imported (which depends on how pip sets up an isolated
# build). So: build it without isolation, in a venv that has setuptools and wheel; the hook then always
# runs and fails the build if any jar could not be downloaded. Pinned for reproducible jars; bump it
# deliberately (KCL_MVN_REPO_SEARCH_URL may point at a Maven mirror, e.g. an internal proxy).
ARG KCLPY_VERSION=3.2.0
ARG KCL_MVN_REPO_SEARCH_URL=https://repo1.maven.org/maven2/
RUN pip install "setuptools>=70,<81" "wheel>=0.43,<1" \
 && pip install --no-build-isolation "amazon-kclpy==${KCLPY_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas/ schemas/
COPY processors/ processors/
COPY worker/ worker/
# The `kcl` extra (upstream amazon-kclpy) is already satisfied by the build above, so pip keeps it.
# Then prove that the installed worker (-P: not the sources in /src) finds KCL 3.x jars, and drop what
# only building needed. (DL3013: this installs the project itself; pyproject.toml bounds its dependencies.)
# hadolint ignore=DL3013
RUN pip install ".[kcl]" \
 && python -P -c "from worker.kcl_daemon import kcl_jar_dir, kcl_version; v = kcl_version(kcl_jar_dir()); assert v >= (3, 0, 0), v; print('KCL', v)" \
 && pip uninstall --yes setuptools wheel pip


FROM python:3.11-slim-bookworm AS runtime

# The MultiLangDaemon needs a Java 17 runtime, not a JDK; Debian's package gets bookworm-security
# updates. Package versions are not pinned: bookworm's archive drops superseded versions, so a pin
# would break rebuilds that should pick up security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install --yes --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/* \
 && java -version

# A fixed, numeric non-root id, so orchestrators can check "non-root" without reading /etc/passwd.
RUN groupadd --system --gid 10001 fleet \
 && useradd --system --uid 10001 --gid fleet --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin fleet

COPY --from=build /opt/venv /opt/venv

# Bytecode was compiled at install time; the root filesystem may be read-only (only /tmp is written:
# the daemon's properties, the JVM's perf data and the heartbeat files).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# No WORKDIR: `python -m` puts the working directory on sys.path, and / is not writable by the worker.
USER 10001:10001

# The launcher forwards SIGTERM to the daemon, which lets each processor checkpoint (shutdownRequested)
# within FLEET_KCL_SHUTDOWN_GRACE_MILLIS; give the container at least that plus margin to stop (the ECS
# task definition sets stopTimeout 120; with `docker stop`, use --time 60 or more).
STOPSIGNAL SIGTERM

# Unhealthy when the daemon or one of the record processors stops touching its heartbeat file (in the
# directory FLEET_HEARTBEAT_PATH, stale after FLEET_HEARTBEAT_MAX_AGE_SECONDS). The start period covers
# JVM start, lease table creation and the first shard sync (FLEET_KCL_SHARD_SYNC_INTERVAL_MILLIS).
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["python", "-m", "worker", "health"]

ENTRYPOINT ["python", "-m", "worker", "run"]
