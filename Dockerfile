# fleet-ingest: `python -m worker run` starts the KCL MultiLangDaemon (Java), which starts one
# `python -m worker process` child per shard lease it holds.
#
# Two stages on the same Python base, so the virtualenv built in the first runs unchanged in the second:
#   build    installs every Python dependency from hashed locks (image/*.lock, pip --require-hashes), the
#            KCL 3.1.3 jars checked against image/kcl-jars.txt (the very jars every local run uses), upstream
#            amazon-kclpy 3.1.3 (the release whose KCL is 3.1.3, as kclpy-ext's) and this project, into
#            /opt/venv. No compiler or JDK: every dependency ships wheels, the jars are downloaded, not built.
#   runtime  the same slim base + Debian's headless JRE 17 + /opt/venv. No pip, no build tools, no sources.
#
# The base is python:3.11-slim-bookworm. Pin it by digest (FROM python:3.11-slim-bookworm@sha256:...) where
# a registry is reachable: tests/deploy/test_image.py expects that form and says so until it is there.
#
# Build context: see .dockerignore (an allowlist). Build: docker build -t fleet-ingest .

FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv

# Build tools first (setuptools, wheel, and the pytest-runner amazon-kclpy's setup.py asks for: installed,
# setuptools fetches nothing), then the worker's dependencies: every file checked against its hash.
WORKDIR /build
COPY image/ image/
RUN pip install --require-hashes --no-deps -r image/build.lock \
 && pip install --require-hashes --no-deps -r image/requirements.lock

# amazon-kclpy is published as an sdist whose setup.py downloads the jars its pom.xml names, unchecked. So:
# fetch the jars of image/kcl-jars.txt ourselves (KCL_MVN_REPO_SEARCH_URL: Maven Central, or a mirror),
# each refused unless its SHA-256 is the committed one; give the sdist (hash-locked) a pom.xml naming
# exactly those; build it without isolation against file:// (it copies them, downloads nothing); then
# check the installed jars again: those 79, no other. Bump KCLPY_VERSION, image/kclpy.lock,
# image/kcl-jars.txt and kclpy-ext together (tests/deploy/test_image.py fails when they diverge).
ARG KCLPY_VERSION=3.1.3
ARG KCL_MVN_REPO_SEARCH_URL=https://repo1.maven.org/maven2/
RUN python image/kcl_jars.py fetch "${KCL_MVN_REPO_SEARCH_URL}" /build/m2 \
 && pip download --require-hashes --no-deps --no-build-isolation --no-binary :all: -d /build/sdist \
    -r image/kclpy.lock \
 && tar -xzf "/build/sdist/amazon_kclpy-${KCLPY_VERSION}.tar.gz" -C /build \
 && python image/kcl_jars.py pom > "/build/amazon_kclpy-${KCLPY_VERSION}/pom.xml" \
 && KCL_MVN_REPO_SEARCH_URL=file:///build/m2/ \
    pip install --no-deps --no-build-isolation "/build/amazon_kclpy-${KCLPY_VERSION}" \
 && python image/kcl_jars.py verify "$(python -c 'import amazon_kclpy, os; print(os.path.dirname(amazon_kclpy.__file__))')/jars"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas/ schemas/
COPY processors/ processors/
COPY worker/ worker/
# The project itself (a directory has no hash), --no-deps: everything it needs came from the locks, which
# `pip check` proves. Then that the installed worker (-P: not the sources in /src) finds KCL 3.x jars, and
# drop what only building needed, pip included. (DL3013: the project itself; the locks pin the rest.)
# hadolint ignore=DL3013
RUN pip install --no-deps --no-build-isolation . \
 && pip check \
 && python -P -c "from worker.kcl_daemon import kcl_jar_dir, kcl_version; v = kcl_version(kcl_jar_dir()); assert v >= (3, 0, 0), v; print('KCL', v)" \
 && pip uninstall --yes setuptools wheel pytest-runner packaging pip


FROM python:3.11-slim-bookworm AS runtime

# No pip at runtime: the base image's own (and the wheels ensurepip would install it from) go too; the
# venv's went in the build stage. Nothing installs Python packages into a running task.
RUN python -m pip uninstall --yes pip setuptools wheel \
 && rm -rf /usr/local/lib/python3.11/ensurepip

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
