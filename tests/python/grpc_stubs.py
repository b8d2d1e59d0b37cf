"""grpcio stubs generated from proto/hyprstream/v1 by grpc_tools.protoc (the proto files are the interface:
nothing hand-written stands between the tests and the server), once per test session."""
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

from conftest import ROOT

_OUT = Path(tempfile.mkdtemp(prefix="hyprstream-stubs-"))
_PROTOS = sorted(str(p) for p in (ROOT / "proto" / "hyprstream" / "v1").glob("*.proto"))
_rc = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"-I{Path(protoc.__file__).parent / '_proto'}",
                   f"--python_out={_OUT}", f"--grpc_python_out={_OUT}", *_PROTOS])
assert _rc == 0, "protoc failed on proto/hyprstream/v1"
sys.path.insert(0, str(_OUT))

from hyprstream.v1 import adapters_pb2, adapters_pb2_grpc  # noqa: E402
from hyprstream.v1 import common_pb2  # noqa: E402
from hyprstream.v1 import inference_pb2, inference_pb2_grpc  # noqa: E402
from hyprstream.v1 import learning_pb2, learning_pb2_grpc  # noqa: E402

__all__ = ["adapters_pb2", "adapters_pb2_grpc", "common_pb2", "inference_pb2", "inference_pb2_grpc", "learning_pb2",
           "learning_pb2_grpc"]
