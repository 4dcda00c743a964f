"""Regenerate the Python stubs of the stepstream contract.

Run as `python protos/generate.py` (or `make protos`) from the repository root, with the
pinned `grpcio-tools` and `mypy-protobuf` of the `dev` extra installed. The output is
committed; CI runs this again and fails when `git status` shows a difference.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE_DIR = PROTO_ROOT / "stepstream" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def main() -> int:
    for path in PACKAGE_DIR.iterdir():
        if path.name.endswith(GENERATED_SUFFIXES):
            path.unlink()
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PACKAGE_DIR.glob("*.proto"))
    # The mypy plugins are console scripts installed next to the interpreter.
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--python_out={PROTO_ROOT}",
        f"--grpc_python_out={PROTO_ROOT}",
        f"--mypy_out={PROTO_ROOT}",
        f"--mypy_grpc_out={PROTO_ROOT}",
        *protos,
    ]
    return subprocess.run(command, cwd=PROTO_ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
