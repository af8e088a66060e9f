"""Regenerate the Python code for every .proto under proto/ (run from anywhere).

The generated modules land in agentmesh/v1/ and agentmesh/etcdv3/, packages
that hold generated code only. tests/test_proto_current.py fails when they
are stale.
"""
from __future__ import annotations

import pathlib
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Generate code for all protos into out_dir; return the proto files used."""
    protos = sorted((ROOT / "proto").rglob("*.proto"))
    args = [
        "protoc",
        f"-I{ROOT / 'proto'}",
        f"-I{pathlib.Path(protoc.__file__).parent / '_proto'}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for pkg in {p.parent.relative_to(ROOT / "proto") for p in protos}:
        init = out_dir / pkg / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated from proto/; do not edit."""\n')
    return protos


if __name__ == "__main__":
    generate(ROOT)
    sys.exit(0)
