"""A wheel that works: `pip install .` (not editable) into a fresh venv, then every console script and every
`python -m bench.*` script answers `--help`, importing nothing from the checkout.

The fresh venv gets only the project's wheel (`--no-deps`); its third-party requirements come from the project's
`.venv` through a plain path line in a `.pth` file, which adds that directory to `sys.path` without running the
`.pth` files in it — so the editable install's finder there stays off and every first-party import must come from
the wheel. Everything runs from a temporary directory, so the checkout is not on `sys.path` either.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH_SCRIPTS = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem != "__init__")
CONSOLE = {
    "edge-node": [[], ["transcribe"], ["run"], ["agent"]],
    "cloud-service": [[], ["serve"], ["worker"]],
    "fleetctl": [[], ["keys", "init"], ["model", "build"], ["device", "add"], ["config", "set"], ["status"]],
}
FIRST_PARTY = ["edge_node", "cloud_service", "fleetctl", "shared", "proto", "evaluation", "testkit", "bench"]


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    work = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
    src = work / "src"
    shutil.copytree(ROOT, src, ignore=_source_only)
    dist = work / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(dist), str(src)], check=True, cwd=work, capture_output=True)
    (wheel,) = dist.glob("whisper_fleet-*.whl")
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    purelib = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    (purelib / "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, cwd=work, capture_output=True)
    yield env_dir, work


def _source_only(directory: str, names: list[str]) -> set[str]:
    """What a source distribution would not carry: the checkout's venv, models, keys, caches and outputs."""
    skip = {n for n in names if n in {"__pycache__", "build"} or n.endswith(".egg-info") or n.startswith(".")}
    if Path(directory) == ROOT:
        skip |= {"models", "keys", "state", "samples", "secrets"} & set(names)
    if Path(directory) == ROOT / "bench":
        skip |= {"out"} & set(names)
    return skip


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})


def test_first_party_packages_come_from_the_wheel(wheel_env: tuple[Path, Path]) -> None:
    env_dir, work = wheel_env
    code = ("import importlib, importlib.util\n"
            f"for name in {FIRST_PARTY!r}:\n"
            "    print(name, importlib.import_module(name).__file__)\n"
            "print('tests', importlib.util.find_spec('tests'))\n")
    out = _run([str(env_dir / "bin" / "python"), "-c", code], work)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    for name in FIRST_PARTY:
        assert lines[name].startswith(str(env_dir)), (name, lines[name])
    assert lines["tests"] == "None"  # the tests are not packaged


@pytest.mark.parametrize("script,args", [(s, a) for s, variants in CONSOLE.items() for a in variants])
def test_console_script_help(wheel_env: tuple[Path, Path], script: str, args: list[str]) -> None:
    env_dir, work = wheel_env
    out = _run([str(env_dir / "bin" / script), *args, "--help"], work)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage:" in out.stdout


@pytest.mark.parametrize("module", BENCH_SCRIPTS)
def test_bench_module_help(wheel_env: tuple[Path, Path], module: str) -> None:
    env_dir, work = wheel_env
    out = _run([str(env_dir / "bin" / "python"), "-m", f"bench.{module}", "--help"], work)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage:" in out.stdout
