"""The vendored proto files and the stubs made from them (service/grpc/proto, scripts/grpc_protos.py):
protoc on each file gives back the descriptor of the wheel it was printed from, byte for byte; the committed
stubs carry those descriptors; KServe's service is a subset of Triton's, wire for wire, but for the
repository requests' field numbers (the servicer takes the model's name from either field)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import grpc_protos
import pytest
from google.protobuf import descriptor_pb2

pytest.importorskip("grpc_tools", reason="pip install grpcio-tools")


def _wheel(name: str) -> descriptor_pb2.FileDescriptorProto:
    distribution, module, *_ = grpc_protos.SOURCES[name]
    if importlib.util.find_spec(distribution.replace("client", "client.grpc")) is None:
        pytest.skip(f"the {distribution} wheel is not installed (pip install {distribution})")
    return descriptor_pb2.FileDescriptorProto.FromString(grpc_protos.wheel_descriptor(distribution, module))


def _without_json_names(messages) -> None:
    # protoc's descriptor sets name each field's JSON form; the generated modules leave it out.
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _without_json_names(message.nested_type)


def _compiled(name: str, tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    from grpc_tools import protoc

    out = tmp_path / f"{name}.pb"
    assert protoc.main(["protoc", f"-I{grpc_protos.PROTO_DIR}", f"--descriptor_set_out={out}",
                        str(grpc_protos.PROTO_DIR / name)]) == 0
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[-1]
    _without_json_names(compiled.message_type)
    return compiled


@pytest.mark.parametrize("name", sorted(grpc_protos.SOURCES))
def test_each_vendored_proto_compiles_to_its_wheels_descriptor(name, tmp_path):
    wheel = _wheel(name)
    assert _compiled(name, tmp_path).SerializeToString() == wheel.SerializeToString()


@pytest.mark.parametrize("name", grpc_protos.GENERATED)
def test_the_committed_stubs_carry_the_vendored_descriptors(name, tmp_path):
    stub = grpc_protos.PROTO_DIR / name.replace(".proto", "_pb2.py")
    calls = [node for node in ast.walk(ast.parse(stub.read_text()))
             if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile"]
    assert len(calls) == 1, f"{stub} is not protoc's output: run python scripts/grpc_protos.py"
    carried = descriptor_pb2.FileDescriptorProto.FromString(ast.literal_eval(calls[0].args[0]))
    assert carried == _compiled(name, tmp_path), f"{stub} is stale: run python scripts/grpc_protos.py"


def test_kserves_service_is_a_subset_of_tritons_on_the_wire():
    triton, kserve = _wheel("grpc_service.proto"), _wheel("grpc_predict_v2.proto")
    methods = {m.name: m for m in triton.service[0].method}
    for method in kserve.service[0].method:
        theirs = methods[method.name]
        assert (theirs.input_type, theirs.output_type, theirs.client_streaming, theirs.server_streaming) == (
            method.input_type, method.output_type, method.client_streaming, method.server_streaming)

    def fields(messages, prefix=""):
        out = {}
        for m in messages:
            out[prefix + m.name] = {f.number: (f.name, f.type, f.label, f.type_name) for f in m.field}
            out |= fields(m.nested_type, f"{prefix}{m.name}.")
        return out

    tritons, kserves = fields(triton.message_type), fields(kserve.message_type)
    for name, wire in kserves.items():
        if not name.startswith("Repository"):
            assert wire.items() <= tritons[name].items(), name
    for kind in ("Load", "Unload"):  # KServe's model_name is field 1, Triton's repository_name
        assert kserves[f"RepositoryModel{kind}Request"][1][0] == "model_name"
        assert tritons[f"RepositoryModel{kind}Request"][1][0] == "repository_name"


def test_the_committed_type_stubs_are_what_protoc_writes(tmp_path):
    grpc_protos.generate(tmp_path)
    stubs = sorted(tmp_path.glob("*_pb2.pyi"))
    assert [s.name for s in stubs] == [n.replace(".proto", "_pb2.pyi") for n in sorted(grpc_protos.GENERATED)]
    for stub in stubs:
        assert stub.read_text() == (grpc_protos.PROTO_DIR / stub.name).read_text(), (
            f"{stub.name} is stale: run python scripts/grpc_protos.py")
