"""Run a monitoring command (causal, plan, ...) in a subprocess: through
``dmca-hpc`` when dmca_hpc.cli.main lists it, else straight from its module
(dmca_hpc/cli/<name>.py), so the tests run before and after it is registered."""
from __future__ import annotations

import subprocess
import sys

_HARNESS = ("import argparse, importlib, sys\n"
            "from dmca_hpc.cli import main as M\n"
            "name = sys.argv[1]\n"
            "if name in M.COMMANDS:\n"
            "    sys.exit(M.main(sys.argv[1:]))\n"
            "mod = importlib.import_module('dmca_hpc.cli.' + name)\n"
            "p = argparse.ArgumentParser(prog='dmca-hpc ' + name)\n"
            "mod.add_arguments(p)\n"
            "sys.exit(mod.run_cli(p.parse_args(sys.argv[2:])))\n")


def run_command(name: str, *args, timeout: float = 120, env: dict | None = None):
    """``env``: the environment of the command (default: this process's)."""
    return subprocess.run([sys.executable, "-c", _HARNESS, name, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)
