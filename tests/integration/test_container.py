"""The Apptainer recipe containers/dmca_hpc.def.

Apptainer cannot be installed here, so: (1) static checks that the recipe
installs what setup.cfg requires (same pins, the MPICH-ABI [mpi] extra,
Debian Quantum ESPRESSO) and runs the same entry point; (2) the %post pip
steps are run verbatim as a shell script in a throwaway virtualenv, on a copy
of exactly the files %files puts in the image.  (2) does not download the
dependency set again: the throwaway venv sees the project venv's packages
through a .pth file (so the pins are checked against the wheels installed
there by `pip check`), and only setuptools is fetched (pip cache) to build
the package in pip's build isolation.
"""
from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEF = ROOT / "containers" / "dmca_hpc.def"
BEGIN, END = "# --- pip steps: begin", "# --- pip steps: end"


def sections(text: str) -> dict[str, str]:
    """Apptainer sections ('header', 'post', 'files', ...) -> body text."""
    out, name, buf = {}, "header", []
    for line in text.splitlines():
        m = re.match(r"^%(\w+)\s*$", line)
        if m:
            out[name] = "\n".join(buf)
            name, buf = m.group(1), []
        else:
            buf.append(line)
    out[name] = "\n".join(buf)
    return out


def setup_cfg() -> configparser.ConfigParser:
    cp = configparser.ConfigParser()
    cp.read(ROOT / "setup.cfg")
    return cp


def reqs(block: str) -> dict[str, str]:
    """'name==version' lines -> {name: version} (every requirement must be pinned)."""
    out = {}
    for line in block.strip().splitlines():
        line = line.strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+-]+)", line)
        assert m, f"setup.cfg: requirement {line!r} is not pinned with =="
        out[m.group(1).lower()] = m.group(2)
    return out


def pip_steps(post: str) -> str:
    assert BEGIN in post and END in post, f"{DEF}: %post lacks the '{BEGIN}' / '{END}' markers"
    return post.split(BEGIN, 1)[1].split("\n", 1)[1].split(END, 1)[0]


def shell_var(post: str, name: str) -> str:
    m = re.search(rf"^\s*{name}=(\S+)\s*$", post, re.M)
    assert m, f"{DEF}: %post does not set {name}"
    return m.group(1)


@pytest.fixture(scope="module")
def recipe() -> dict[str, str]:
    return sections(DEF.read_text())


def test_header_and_required_sections(recipe):
    assert re.search(r"^Bootstrap:\s*docker", recipe["header"], re.M)
    assert re.search(r"^From:\s*debian:bookworm", recipe["header"], re.M), \
        "Debian bookworm: same QE packages and Python 3.11 as the test machines"
    for s in ("files", "environment", "post", "runscript", "test", "labels"):
        assert s in recipe, f"{DEF}: missing %{s}"


def test_post_installs_debian_quantum_espresso(recipe):
    post = recipe["post"]
    apt = " ".join(l.strip().rstrip("\\") for l in post.splitlines())
    for pkg in ("quantum-espresso", "quantum-espresso-data", "python3", "python3-venv"):
        assert re.search(rf"apt-get install[^;]*\s{re.escape(pkg)}(\s|$)", apt), pkg
    assert "ESPRESSO_PSEUDO=/usr/share/espresso/pseudo" in recipe["environment"]


def test_pip_steps_install_exactly_setup_cfg_pins(recipe):
    cp = setup_cfg()
    post = recipe["post"]
    steps = pip_steps(post)
    src, venv = shell_var(post, "DMCA_SRC"), shell_var(post, "DMCA_VENV")
    # setup.cfg travels into the image at the source dir the package is installed from
    files = [l.split() for l in recipe["files"].splitlines() if l.strip() and not l.strip().startswith("#")]
    assert ["setup.cfg", f"{src}/setup.cfg"] in files
    installs = [l for l in steps.splitlines() if re.search(r"pip install", l)]
    assert installs, "no pip install in the pip steps"
    from_src = [l for l in installs if '"$DMCA_SRC[' in l]
    assert len(from_src) == 1, "install the package itself from $DMCA_SRC (its setup.cfg pins apply)"
    extras = set(re.search(r'\$DMCA_SRC\[([^\]]*)\]', from_src[0]).group(1).split(","))
    declared = set(cp["options.extras_require"].keys())
    assert "mpi" in extras, "the [mpi] extra (mpi4py + MPICH-ABI mpich wheel) is the hybrid-MPI model"
    assert extras <= declared, f"extras {extras - declared} not declared in setup.cfg"
    # any requirement spelled out in the recipe must carry setup.cfg's pin (one list of pins)
    pins = reqs(cp["options"]["install_requires"])
    for e in declared:
        pins.update(reqs(cp["options.extras_require"][e]))
    for line in installs:
        for name, ver in re.findall(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+-]+)", line):
            assert pins.get(name.lower()) == ver, f"{DEF}: {name}=={ver} but setup.cfg pins {pins.get(name.lower())}"
        assert not re.search(r"--no-deps|-U\b|--upgrade|--pre\b", line), f"{DEF}: {line.strip()}"
    assert "mpich" in reqs(cp["options.extras_require"]["mpi"]), "setup.cfg [mpi] should pin the mpich wheel"
    assert re.search(r"pip check", steps)
    assert f'"$DMCA_VENV/bin/python" -m pip' in steps and venv.startswith("/opt/")


def test_runscript_and_test_use_the_setup_cfg_entry_point(recipe):
    cp = setup_cfg()
    scripts = dict(
        (k.strip(), v.strip()) for k, v in
        (l.split("=", 1) for l in cp["options.entry_points"]["console_scripts"].strip().splitlines()))
    assert scripts.get("dmca-hpc") == "dmca_hpc.cli.main:main"
    assert re.search(r'^\s*exec dmca-hpc "\$@"\s*$', recipe["runscript"], re.M)
    assert "dmca-hpc --help" in recipe["test"]
    assert "/opt/dmca_hpc/venv/bin" in recipe["environment"] and "/opt/dmca_hpc/venv/bin" in recipe["test"]
    assert "DMCA_HPC_HOME=/opt/dmca_hpc/src" in recipe["environment"], \
        "dmca_hpc.slurm finds slurm/ and config/ through DMCA_HPC_HOME in the image"


def test_files_sources_exist(recipe):
    for line in recipe["files"].splitlines():
        if line.strip() and not line.strip().startswith("#"):
            srcpath = line.split()[0]
            assert (ROOT / srcpath).exists(), f"{DEF}: %files copies {srcpath}, which is not in {ROOT}"


def test_post_pip_steps_run_in_throwaway_venv(recipe, tmp_path):
    post = recipe["post"]
    src, venv = tmp_path / "src", tmp_path / "venv"
    # exactly what %files puts in the image (what exists of it; test_files_sources_exist checks the rest)
    for line in recipe["files"].splitlines():
        if not line.strip() or line.strip().startswith("#"):
            continue
        rel = line.split()[0]
        s = ROOT / rel
        if s.is_dir():
            shutil.copytree(s, src / rel, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif s.exists():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(s, src / rel)
    if not (src / "README.md").exists():  # setup.cfg's long_description file (lead's README)
        (src / "README.md").write_text("dmca_hpc\n")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # pip from the project venv, run by the new venv's python (no ensurepip download);
    # dependencies come from the project venv's site-packages via a .pth file
    site_main = Path(sysconfig.get_paths()["purelib"])
    site_new = Path(subprocess.run([str(venv / "bin" / "python"), "-c",
                                    "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
    (site_new / "zz_project_venv.pth").write_text(str(site_main) + "\n")
    script = tmp_path / "pip_steps.sh"
    script.write_text("set -eu\nexport PIP_DISABLE_PIP_VERSION_CHECK=1\n"
                      f"DMCA_VENV={venv}\nDMCA_SRC={src}\n" + pip_steps(post))
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"pip steps failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    # the package really was installed into the throwaway venv (not found through the .pth)
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import dmca_hpc; print(dmca_hpc.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip()
    assert where.startswith(str(site_new)), where
    # and the console script it runs is the setup.cfg entry point
    text = (venv / "bin" / "dmca-hpc").read_text()
    assert "from dmca_hpc.cli.main import main" in text
    # a non-editable install carries config/ and the job catalogue (setup.cfg
    # data_files): the quickstart validates with nothing of the source tree
    env = {k: v for k, v in os.environ.items()
           if k not in ("DMCA_HPC_CONFIG_DIR", "DMCA_HPC_HOME")}
    probe = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "from dmca_hpc.config import config_dir; from dmca_hpc.cli.main import "
                            "_quickstart_path; print(config_dir()); print(_quickstart_path())"],
                           capture_output=True, text=True, cwd=tmp_path, env=env)
    assert probe.returncode == 0, probe.stderr
    cfg, qs = probe.stdout.split()
    assert cfg.startswith(str(venv)) and qs.startswith(str(venv)), probe.stdout
    val = subprocess.run([str(venv / "bin" / "dmca-hpc"), "validate", qs], capture_output=True,
                         text=True, cwd=tmp_path, env=env)
    assert val.returncode == 0, val.stdout + val.stderr
