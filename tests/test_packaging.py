"""Installing devart adds one name to an environment: a user's own ``core`` (or ``api``, ``cli``…) still imports.

The wheel is built from this checkout as a user's ``pip install`` builds it, installed into a fresh virtualenv
beside a package called ``core``, and both are imported there; the dependencies come from this environment.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The folders devart/ links to: the packages installed under devart's name.
PACKAGES = sorted(p.name for p in (ROOT / "devart").iterdir() if p.is_symlink())
#: What the wheel is built from: the packaging metadata, devart/, the SDK and the folders devart/ links to.
SOURCES = ("pyproject.toml", "README.md", "devart", "devart_sdk", *PACKAGES)
PROBE = """
import core, devart, devart.core.settings, devart.cli.main, devart.workflows.pipeline, devart.domain.runs
assert core.OWNER == "the user", core.__file__
assert devart.core.settings.__file__.startswith(devart.__path__[0]), devart.core.settings.__file__
import importlib.util
import sys
print(sorted(n for n in sys.argv[1:] if importlib.util.find_spec(n) is not None))
"""


def test_the_wheel_installs_under_one_name_beside_a_users_core(tmp_path: Path) -> None:
    assert {"api", "cli", "core", "workers", "workflows", "activities", "domain"} <= set(PACKAGES), PACKAGES
    # Nothing of this checkout may be on the path of the fresh environment: it must see the wheel alone.
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    source = tmp_path / "source"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(source)],
                           capture_output=True, text=True, timeout=300, env=clean)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("devart-*.whl"))

    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                                "--disable-pip-version-check", str(wheel)], capture_output=True, text=True, timeout=300,
                               env=clean)
    assert installed.returncode == 0, installed.stderr[-3000:]
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True, env=clean).stdout.strip())
    # The user's own package called core, and this environment's site-packages for devart's dependencies only.
    (purelib / "core").mkdir()
    (purelib / "core" / "__init__.py").write_text('OWNER = "the user"\n')
    (purelib / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    names = sorted(p.name for p in purelib.iterdir() if not p.name.endswith((".dist-info", ".pth")))
    assert names == ["core", "devart", "devart_sdk"], names
    bare = [p for p in PACKAGES if p != "core"]  # the user's own core is meant to be importable
    probe = subprocess.run([str(python), "-c", PROBE, *bare], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                           env=clean)
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert probe.stdout.strip() == "[]"  # none of devart's folders is importable under its bare name
