"""The image's KCL jars: fetched from a Maven repository, each checked against ``kcl-jars.txt``.

amazon-kclpy is published as an sdist whose ``setup.py`` downloads the jars its ``pom.xml`` names, unchecked.
The Dockerfile therefore fetches the jars ``kcl-jars.txt`` lists (KCL 3.1.3: the very set every local run
uses, from kclpy-ext) into a local Maven layout, refusing any whose SHA-256 differs (``fetch``); gives
amazon-kclpy a ``pom.xml`` naming exactly those (``pom``), so its ``setup.py`` copies them from
``file://`` and downloads nothing; and checks what got installed (``verify``): those jars, no other.

Standard library only: it runs in the build stage before anything is installed.

    python kcl_jars.py fetch REPOSITORY_URL DIRECTORY
    python kcl_jars.py pom > pom.xml
    python kcl_jars.py verify JAR_DIRECTORY
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

MANIFEST = Path(__file__).with_name("kcl-jars.txt")


@dataclass(frozen=True, slots=True)
class Jar:
    sha256: str
    group: str
    artifact: str
    version: str

    @property
    def name(self) -> str:
        return f"{self.artifact}-{self.version}.jar"

    @property
    def path(self) -> str:
        """Where a Maven repository holds it (amazon-kclpy's setup.py builds the same)."""
        return f"{self.group.replace('.', '/')}/{self.artifact}/{self.version}/{self.name}"


class JarMismatch(Exception):
    """A jar is missing, extra, or not the bytes the manifest names."""


def manifest(path: Path = MANIFEST) -> list[Jar]:
    jars = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            sha256, group, artifact, version = line.split()
            jars.append(Jar(sha256, group, artifact, version))
    return jars


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(repository: str, directory: Path, jars: list[Jar]) -> None:
    """Download every jar into ``directory`` (Maven layout); raise on any whose SHA-256 differs."""
    for jar in jars:
        target = directory / jar.path
        target.parent.mkdir(parents=True, exist_ok=True)
        url = repository.rstrip("/") + "/" + jar.path
        with urllib.request.urlopen(url, timeout=60) as response, target.open("wb") as out:  # noqa: S310
            shutil.copyfileobj(response, out)
        got = sha256_of(target)
        if got != jar.sha256:
            target.unlink()
            raise JarMismatch(f"{jar.name} from {url}: SHA-256 {got}, expected {jar.sha256}")


def pom(jars: list[Jar]) -> str:
    """A ``pom.xml`` amazon-kclpy's ``setup.py`` reads: these jars as dependencies, nothing else."""
    dependencies = "".join(
        "    <dependency>"
        f"<groupId>{escape(j.group)}</groupId><artifactId>{escape(j.artifact)}</artifactId>"
        f"<version>{escape(j.version)}</version></dependency>\n"
        for j in jars
    )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n  <properties></properties>\n"
        f"  <dependencies>\n{dependencies}  </dependencies>\n</project>\n"
    )


def verify(directory: Path, jars: list[Jar]) -> None:
    """``directory`` holds exactly these jars, each with its SHA-256."""
    found = {path.name for path in directory.glob("*.jar")}
    expected = {jar.name for jar in jars}
    if found != expected:
        raise JarMismatch(f"missing {sorted(expected - found)}, unexpected {sorted(found - expected)}")
    wrong = [jar.name for jar in jars if sha256_of(directory / jar.name) != jar.sha256]
    if wrong:
        raise JarMismatch(f"SHA-256 differs: {wrong}")


def main(argv: list[str]) -> int:
    jars = manifest()
    match argv:
        case ["fetch", repository, directory]:
            fetch(repository, Path(directory), jars)
        case ["pom"]:
            sys.stdout.write(pom(jars))
        case ["verify", directory]:
            verify(Path(directory), jars)
            sys.stderr.write(f"{len(jars)} KCL jars verified in {directory}\n")
        case _:
            sys.stderr.write(__doc__ or "")
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
