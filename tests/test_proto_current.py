"""The generated code in agentmesh/v1 and agentmesh/etcdv3 matches proto/."""
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import gen_proto  # noqa: E402


def test_generated_code_is_current(tmp_path):
    protos = gen_proto.generate(tmp_path)
    assert protos, "no .proto files found under proto/"
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*") if p.is_file())
    assert generated
    stale = [str(rel) for rel in generated
             if not (ROOT / rel).exists() or (ROOT / rel).read_bytes() != (tmp_path / rel).read_bytes()]
    assert not stale, f"generated code is stale; run python scripts/gen_proto.py: {stale}"
