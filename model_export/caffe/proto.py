"""Caffe's message classes (a subset of caffe.proto, see caffe_subset.proto), built at runtime.

protoc is not needed: the schema below becomes a FileDescriptorProto, which goes into a private descriptor
pool (so a real `caffe_pb2` elsewhere in the process cannot clash with it).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
SCALARS = {"int32": _F.TYPE_INT32, "int64": _F.TYPE_INT64, "float": _F.TYPE_FLOAT,
           "double": _F.TYPE_DOUBLE, "string": _F.TYPE_STRING}

# message -> [(label, type, name, number, packed)], with Caffe's own field numbers.
SCHEMA: dict[str, list[tuple[str, str, str, int, bool]]] = {
    "BlobShape": [("repeated", "int64", "dim", 1, True)],
    "BlobProto": [
        ("optional", "BlobShape", "shape", 7, False),
        ("repeated", "float", "data", 5, True),
        ("repeated", "float", "diff", 6, True),
        ("repeated", "double", "double_data", 8, True),
        ("repeated", "double", "double_diff", 9, True),
        ("optional", "int32", "num", 1, False),
        ("optional", "int32", "channels", 2, False),
        ("optional", "int32", "height", 3, False),
        ("optional", "int32", "width", 4, False),
    ],
    "LayerParameter": [
        ("optional", "string", "name", 1, False),
        ("optional", "string", "type", 2, False),
        ("repeated", "string", "bottom", 3, False),
        ("repeated", "string", "top", 4, False),
        ("repeated", "BlobProto", "blobs", 7, False),
    ],
    "V1LayerParameter": [
        ("repeated", "string", "bottom", 2, False),
        ("repeated", "string", "top", 3, False),
        ("optional", "string", "name", 4, False),
        ("optional", "int32", "type", 5, False),
        ("repeated", "BlobProto", "blobs", 6, False),
    ],
    "NetParameter": [
        ("optional", "string", "name", 1, False),
        ("repeated", "V1LayerParameter", "layers", 2, False),
        ("repeated", "LayerParameter", "layer", 100, False),
    ],
}


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The schema as a proto2 FileDescriptorProto in package `caffe`."""
    fdp = descriptor_pb2.FileDescriptorProto(name="segment_service/caffe_subset.proto", package="caffe",
                                             syntax="proto2")
    for message, fields in SCHEMA.items():
        msg = fdp.message_type.add(name=message)
        for label, type_, name, number, packed in fields:
            field = msg.field.add(name=name, number=number)
            field.label = _F.LABEL_REPEATED if label == "repeated" else _F.LABEL_OPTIONAL
            if type_ in SCALARS:
                field.type = SCALARS[type_]
            else:
                field.type = _F.TYPE_MESSAGE
                field.type_name = f".caffe.{type_}"
            if packed:
                field.options.packed = True
    return fdp


@cache
def messages() -> dict[str, Any]:
    """Message classes by name: NetParameter, LayerParameter, V1LayerParameter, BlobProto, BlobShape."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_descriptor())
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{name}"))
            for name in SCHEMA}
