"""Run the real ``streams`` CLI in a subprocess, as a user would, and keep everything it printed.

Passphrases go through environment variables; every output is recorded in ``Cli.transcript`` so tests can
check that no secret was ever printed (THREATS 9).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    def ok(self) -> Run:
        assert self.returncode == 0, f"{self.args}: exit {self.returncode}\n{self.stdout}\n{self.stderr}"
        return self


@dataclass
class Cli:
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    transcript: list[Run] = field(default_factory=list)

    def __call__(self, *args: str, stdin: int | None = subprocess.DEVNULL) -> Run:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        p = subprocess.run(
            [sys.executable, "-m", "streams.cli", *args],
            cwd=self.cwd, env=env, capture_output=True, text=True, timeout=60, stdin=stdin, check=False,
        )
        run = Run(list(args), p.returncode, p.stdout, p.stderr)
        self.transcript.append(run)
        # Expected errors never show a traceback (only -vv asks for the cause chain in the log).
        if "-vv" not in args:
            assert "Traceback" not in p.stderr, p.stderr
        return run

    def all_output(self) -> str:
        return "\n".join(f"{r.stdout}\n{r.stderr}" for r in self.transcript)


def make_keystore(cli: Cli, path: str, passphrase_var: str = "PP") -> str:
    """Create a keystore with the minimal KDF cost; return its DID."""
    out = cli("identity", "create", "--keystore", path, "--passphrase-env", passphrase_var, "--kdf-fast", "--json")
    did: str = out.ok().json["did"]
    return did
