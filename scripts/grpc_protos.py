"""The gRPC service's proto files and the stubs generated from them (service/grpc/proto/).

    python scripts/grpc_protos.py            # regenerate the stubs from the vendored .proto files
    python scripts/grpc_protos.py --vendor   # write the .proto files again from the installed wheels

``--vendor`` reads the descriptors that the installed ``tritonclient`` (grpc_service.proto,
model_config.proto) and ``kserve`` (grpc_predict_v2.proto) wheels were generated from, and prints them back
as .proto source; neither project publishes its proto files on a package registry, and their generated
modules hold the whole descriptor (every message, field number, type, option; comments are not kept). The
test ``tests/service/grpc/test_proto.py`` checks that protoc, run on the vendored files, gives back the
wheels' descriptors byte for byte.

Regenerating runs grpcio-tools' protoc on the vendored files (the messages' modules, their type stubs
``*_pb2.pyi`` that mypy reads, and the service's module), then makes two changes to its output: imports
name the package (``from service.grpc.proto import ...``), and the descriptors go into a pool of their own
(``service/grpc/proto/__init__.py``) instead of protobuf's default pool, because tritonclient.grpc and
kserve each put the same ``inference.*`` names in the default pool and would collide with the service's.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import re
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

REPO = Path(__file__).resolve().parents[1]
PROTO_DIR = REPO / "service" / "grpc" / "proto"
PACKAGE = "service.grpc.proto"
# proto file -> (distribution, generated module inside it, upstream repository and path)
SOURCES = {
    "grpc_service.proto": ("tritonclient", "tritonclient/grpc/service_pb2.py",
                           "triton-inference-server/common", "protobuf/grpc_service.proto"),
    "model_config.proto": ("tritonclient", "tritonclient/grpc/model_config_pb2.py",
                           "triton-inference-server/common", "protobuf/model_config.proto"),
    "grpc_predict_v2.proto": ("kserve", "kserve/protocol/grpc/grpc_predict_v2_pb2.py",
                              "kserve/kserve", "python/kserve/kserve/protocol/grpc/grpc_predict_v2.proto"),
}
GENERATED = ("grpc_service.proto", "model_config.proto")  # the service; grpc_predict_v2 is compared only
LICENSES = {"tritonclient": "BSD-3-Clause (LICENSE.triton.txt, from the tritonclient wheel)",
            "kserve": "Apache-2.0 (LICENSE.kserve.txt)"}


def wheel_descriptor(distribution: str, module: str) -> bytes:
    """The serialized FileDescriptorProto a wheel's generated module registers (read, never imported)."""
    path = Path(importlib.metadata.distribution(distribution).locate_file(module))
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            return ast.literal_eval(node.args[0])
    raise ValueError(f"{path} registers no serialized descriptor")


_SCALARS = {getattr(descriptor_pb2.FieldDescriptorProto, f"TYPE_{n.upper()}"): n for n in (
    "double", "float", "int64", "uint64", "int32", "fixed64", "fixed32", "bool", "string", "bytes",
    "uint32", "sfixed32", "sfixed64", "sint32", "sint64")}


def _type(field: descriptor_pb2.FieldDescriptorProto, package: str) -> str:
    if field.type in _SCALARS:
        return _SCALARS[field.type]
    return field.type_name.removeprefix(f".{package}.")


def _message(msg: descriptor_pb2.DescriptorProto, package: str, indent: str) -> list[str]:
    lines = [f"{indent}message {msg.name} {{"]
    inner = indent + "  "
    maps = {n.name: n for n in msg.nested_type if n.options.map_entry}
    for nested in msg.nested_type:
        if not nested.options.map_entry:
            lines += _message(nested, package, inner)
    for enum in msg.enum_type:
        lines += _enum(enum, inner)
    oneofs: dict[int, list[str]] = {}
    emitted: set[int] = set()
    for field in msg.field:
        entry = maps.get(field.type_name.rsplit(".", 1)[-1]) if field.type_name else None
        if entry is not None and field.label == field.LABEL_REPEATED:
            key, value = entry.field
            text = f"map<{_type(key, package)}, {_type(value, package)}> {field.name} = {field.number};"
        else:
            label = "repeated " if field.label == field.LABEL_REPEATED else ""
            text = f"{label}{_type(field, package)} {field.name} = {field.number};"
        if field.HasField("oneof_index"):
            oneofs.setdefault(field.oneof_index, []).append(text)
            if field.oneof_index not in emitted:
                emitted.add(field.oneof_index)
                lines.append(f"{inner}oneof {msg.oneof_decl[field.oneof_index].name} {{")
                lines.append(f"{inner}  @ONEOF{field.oneof_index}@")
                lines.append(f"{inner}}}")
            continue
        lines.append(inner + text)
    out = []
    for line in lines:
        match = re.fullmatch(r"(\s*)@ONEOF(\d+)@", line)
        out += [match.group(1) + t for t in oneofs[int(match.group(2))]] if match else [line]
    return [*out, f"{indent}}}"]


def _enum(enum: descriptor_pb2.EnumDescriptorProto, indent: str) -> list[str]:
    return [f"{indent}enum {enum.name} {{", *(f"{indent}  {v.name} = {v.number};" for v in enum.value),
            f"{indent}}}"]


def proto_source(raw: bytes, header: list[str]) -> str:
    """A FileDescriptorProto printed as .proto source (what these files use: proto3 messages, nested
    types, maps, oneofs, enums, services with streaming)."""
    fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
    lines = [*(f"// {h}".rstrip() for h in header), "", f'syntax = "{fd.syntax or "proto2"}";', "",
             f"package {fd.package};", ""]
    lines += [f'import "{dep}";' for dep in fd.dependency] + ([""] if fd.dependency else [])
    for service in fd.service:
        lines.append(f"service {service.name} {{")
        for m in service.method:
            request = ("stream " if m.client_streaming else "") + m.input_type.removeprefix(f".{fd.package}.")
            reply = ("stream " if m.server_streaming else "") + m.output_type.removeprefix(f".{fd.package}.")
            end = " {}" if m.HasField("options") else ";"
            lines.append(f"  rpc {m.name}({request}) returns ({reply}){end}")
        lines += ["}", ""]
    for enum in fd.enum_type:
        lines += [*_enum(enum, ""), ""]
    for msg in fd.message_type:
        lines += [*_message(msg, fd.package, ""), ""]
    return "\n".join(lines)


def vendor() -> None:
    """Write the .proto files from the installed wheels' descriptors."""
    for name, (dist, module, repo, path) in SOURCES.items():
        version = importlib.metadata.version(dist)
        header = [f"{name}: the Open Inference Protocol's gRPC messages and service, as {repo}",
                  f"publishes them ({path}), printed back from the descriptor in the",
                  f"{dist} {version} wheel ({module}) by scripts/grpc_protos.py --vendor",
                  "(the upstream comments are not kept).",
                  f"Licence: {LICENSES[dist]}."]
        (PROTO_DIR / name).write_text(proto_source(wheel_descriptor(dist, module), header))
        print(f"wrote {PROTO_DIR / name} from {dist} {version}")


def generate(out: Path) -> None:
    """The stubs of GENERATED, with package imports and the package's own descriptor pool."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_DIR}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}", *(str(PROTO_DIR / n) for n in GENERATED)]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        for made in sorted(Path(tmp).iterdir()):
            if made.name == "model_config_pb2_grpc.py":  # no service in that file
                continue
            text = made.read_text()
            text = re.sub(r"^import (\w+_pb2) as", rf"from {PACKAGE} import \1 as", text, flags=re.M)
            text = text.replace("_descriptor_pool.Default()", "_pool.POOL").replace(
                "from google.protobuf import descriptor_pool as _descriptor_pool",
                f"from {PACKAGE} import _pool")
            (out / made.name).write_text(text)


def main() -> int:
    """Regenerate the stubs (or, with --vendor, the .proto files first)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vendor", action="store_true", help="write the .proto files from the wheels first")
    parser.add_argument("--out", type=Path, default=PROTO_DIR,
                        help="where the stubs go (default: %(default)s)")
    args = parser.parse_args()
    if args.vendor:
        vendor()
    generate(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
