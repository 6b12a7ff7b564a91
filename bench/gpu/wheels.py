"""The wheel set carried to the GPU machine (bench/gpu/wheels.txt, install.txt): pins, and the offline closure check.

    python -m bench.gpu.wheels pins            # wheels.txt as plain `name==version` lines (pip download -r)
    python -m bench.gpu.wheels check DIR       # every wheel there, nothing missing, under the size limit

`check` reads each wheel's METADATA (no install) and proves that every dependency, with markers evaluated for
CPython 3.12 on Linux x86_64, is either a wheel in DIR, a package the GPU machine already has (ON_GPU_MACHINE), or
left out on purpose (LEFT_OUT, with the reason). Standard library and `packaging` only: it runs on either machine.
"""

import argparse
import re
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

HERE = Path(__file__).resolve().parent
WHEELS_TXT, INSTALL_TXT = HERE / "wheels.txt", HERE / "install.txt"
LIMIT_MIB = 60  # 64 MiB travel with the working tree; the tracked files are about 1 MiB
#: What the GPU machine has (issue 21: Python 3.12, torch 2.11 CUDA 13, timm, accelerate, opencv-python-headless,
#: scikit-learn, typer) and what those require in every release of them.
ON_GPU_MACHINE = {
    *("torch", "torchvision", "timm", "accelerate", "opencv-python-headless", "scikit-learn", "typer"),
    *("numpy", "scipy", "pillow", "huggingface-hub", "safetensors", "pyyaml", "packaging", "tqdm", "psutil"),
    *("filelock", "fsspec", "jinja2", "markupsafe", "networkx", "sympy", "mpmath", "setuptools", "triton"),
    *("joblib", "threadpoolctl", "click", "rich", "shellingham", "markdown-it-py", "mdurl", "pygments", "pip"),
}
#: Versions assumed for the GPU machine's packages when prepare.sh rehearses the install (`stub`): of that
#: machine's period (torch 2.11); the rest get STUB_DEFAULT. A carried wheel needing newer fails the rehearsal.
GPU_VERSIONS = {
    "torch": "2.11.0", "torchvision": "0.26.0", "timm": "1.0.20", "accelerate": "1.10.0", "numpy": "2.3.3",
    "opencv-python-headless": "4.12.0.88", "scikit-learn": "1.7.2", "typer": "0.19.2", "scipy": "1.16.2",
    "pillow": "11.3.0", "huggingface-hub": "0.35.0", "safetensors": "0.6.2", "pyyaml": "6.0.2", "packaging": "25.0",
    "tqdm": "4.67.1", "psutil": "7.1.0", "rich": "14.1.0", "click": "8.2.1", "setuptools": "80.9.0",
}  # fmt: skip
STUB_DEFAULT = "1.0"
#: Required by a carried wheel but not carried: why `trash` runs without it.
LEFT_OUT = {
    "spacy": "fastai requires it for fastai.text only, which trash never imports (about 30 MiB of wheels)",
}
#: Installed without their declared dependencies (run.sh): fastai (spacy, above); python-fasthtml and the two that
#: require it, whose `uvicorn[standard]` extras (uvloop, watchfiles, ...) fastprogress's import never loads.
NO_DEPS = ("fastai", "fastdownload", "fastprogress", "python-fasthtml")
ENV = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "extra": "",
}


def pins(path: Path | None = None) -> dict[str, str]:
    """{canonical name: version} of a pinned requirements file (default wheels.txt; comments, blanks skipped)."""
    found = {}
    for line in (path or WHEELS_TXT).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = re.split(r"\s*==\s*", line)
            found[canonicalize_name(name)] = version
    return found


def requirements(wheel: Path) -> list[Requirement]:
    """The wheel's Requires-Dist entries that apply to CPython 3.12 on Linux x86_64 (no extras)."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        headers = Parser().parsestr(z.read(meta).decode())
    found = [Requirement(r) for r in headers.get_all("Requires-Dist") or []]
    return [r for r in found if r.marker is None or r.marker.evaluate(ENV)]


def problems(folder: Path, limit_mib: float = LIMIT_MIB) -> list[str]:
    """Everything wrong with the wheel folder: missing or extra wheels, unmet dependencies, the size."""
    wanted, errors = pins(), []
    wheels = {canonicalize_name(parse_wheel_filename(p.name)[0]): p for p in folder.glob("*.whl")}
    versions = {name: str(parse_wheel_filename(p.name)[1]) for name, p in wheels.items()}
    errors += [f"missing wheel {n}=={v}" for n, v in wanted.items() if versions.get(n) != v]
    errors += [f"wheel not in wheels.txt: {wheels[n].name}" for n in wheels if n not in wanted]
    install = set(pins(INSTALL_TXT)) | set(NO_DEPS)
    errors += [f"install.txt / NO_DEPS name {n} has no wheel in wheels.txt" for n in install if n not in wanted]
    errors += _uncovered_no_deps(wheels, install)
    for name, wheel in sorted(wheels.items()):
        for req in requirements(wheel):
            dep = canonicalize_name(req.name)
            if dep in ON_GPU_MACHINE or dep in LEFT_OUT:
                continue
            if dep not in versions:
                errors.append(f"{name} requires {req}, which is neither carried nor on the GPU machine")
            elif not req.specifier.contains(versions[dep], prereleases=True):
                errors.append(f"{name} requires {req}, carried {dep}=={versions[dep]}")
    mib = sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 2**20
    if mib > limit_mib:
        errors.append(f"{folder} holds {mib:.1f} MiB, over the {limit_mib} MiB limit")
    return errors


def _uncovered_no_deps(wheels: dict[str, Path], install: set[str]) -> list[str]:
    """A NO_DEPS wheel's dependencies must still be installed: by install.txt, another NO_DEPS wheel, or already."""
    errors = []
    for name in NO_DEPS:
        for req in requirements(wheels[name]) if name in wheels else []:
            dep = canonicalize_name(req.name)
            if dep not in install and dep not in ON_GPU_MACHINE and dep not in LEFT_OUT:
                errors.append(f"{name} is installed without dependencies, and nothing installs its {req}")
    return errors


def write_stubs(site_packages: Path) -> list[str]:
    """Installed-package metadata (a .dist-info folder, no code) for every ON_GPU_MACHINE package but pip, so that
    pip in a scratch venv resolves install.txt as it will on the GPU machine. Returns name==version lines."""
    written = []
    for name in sorted(ON_GPU_MACHINE - {"pip"}):
        version = GPU_VERSIONS.get(name, STUB_DEFAULT)
        info = site_packages / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("stub\n")
        (info / "RECORD").write_text("")
        written.append(f"{name}=={version}")
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("pins", help="wheels.txt as name==version lines")
    sub.add_parser("no-deps", help="the NO_DEPS wheels as name==version lines")
    stub = sub.add_parser("stub", help="metadata-only stand-ins for the GPU machine's packages (a scratch venv)")
    stub.add_argument("site_packages", type=Path)
    check = sub.add_parser("check", help="the wheel folder is complete and small enough")
    check.add_argument("folder", type=Path)
    check.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
    args = p.parse_args(argv)
    if args.command in ("pins", "no-deps"):
        chosen = pins() if args.command == "pins" else {n: v for n, v in pins().items() if n in NO_DEPS}
        print("\n".join(f"{n}=={v}" for n, v in chosen.items()))
        return 0
    if args.command == "stub":
        print(f"stubs of the GPU machine's packages: {', '.join(write_stubs(args.site_packages))}")
        return 0
    errors = problems(args.folder, args.limit_mib)
    for e in errors:
        print(f"wheel check: {e}", file=sys.stderr)
    mib = sum(f.stat().st_size for f in args.folder.glob("*.whl")) / 2**20
    print(f"wheel check: {len(list(args.folder.glob('*.whl')))} wheels, {mib:.1f} MiB, {len(errors)} problems")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
