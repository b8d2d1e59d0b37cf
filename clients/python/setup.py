"""Builds hyprstream_client with its gRPC modules generated from the repository's proto files at build time, so
the client always speaks the interface the server was built from and no generated code is committed.

The generated modules land flat in hyprstream_client/_proto/, their imports rewritten from
`from hyprstream.v1 import common_pb2` to `from . import common_pb2`: relative imports need no sys.path entry and
cannot pick up another package's `hyprstream` module."""
import re
import shutil
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
# An sdist carries its own copy of the proto files (see Sdist); a checkout reads the repository's.
PROTO_ROOTS = (HERE / "proto", HERE.parent.parent / "proto")
PACKAGE_PROTO = Path("hyprstream_client") / "_proto"
ABSOLUTE_IMPORT = re.compile(r"^from hyprstream\.v1 import ", re.MULTILINE)


def proto_root() -> Path:
    for root in PROTO_ROOTS:
        if (root / "hyprstream" / "v1").is_dir():
            return root
    raise FileNotFoundError(f"no proto/hyprstream/v1 in {' or '.join(map(str, PROTO_ROOTS))}")


def generate(out: Path) -> None:
    """Runs grpc_tools.protoc on proto/hyprstream/v1/*.proto and writes the modules into `out`."""
    from grpc_tools import protoc  # a build requirement (pyproject.toml), absent when setup.py is only read

    root = proto_root()
    protos = sorted(str(p) for p in (root / "hyprstream" / "v1").glob("*.proto"))
    well_known = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto, should a file import them
    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main(["grpc_tools.protoc", f"-I{root}", f"-I{well_known}", f"--python_out={tmp}",
                          f"--grpc_python_out={tmp}", *protos])
        if rc != 0:
            raise RuntimeError(f"grpc_tools.protoc failed ({rc}) on {root / 'hyprstream' / 'v1'}")
        out.mkdir(parents=True, exist_ok=True)
        for module in sorted((Path(tmp) / "hyprstream" / "v1").glob("*.py")):
            (out / module.name).write_text(ABSOLUTE_IMPORT.sub("from . import ", module.read_text()))


class BuildPy(build_py):
    def run(self):
        super().run()
        # An editable install imports the package from the source tree, so the modules are generated there.
        generate(HERE / PACKAGE_PROTO if self.editable_mode else Path(self.build_lib) / PACKAGE_PROTO)


class Sdist(sdist):
    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        shutil.copytree(proto_root() / "hyprstream", Path(base_dir) / "proto" / "hyprstream", dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
