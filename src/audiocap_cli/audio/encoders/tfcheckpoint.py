"""Read a TensorFlow V2 checkpoint (``variables.index`` + ``variables.data-*``) with numpy alone.

The index is a LevelDB-style SSTable (the table format TensorFlow's ``tensor_bundle`` writes,
uncompressed) mapping each variable's key to a ``BundleEntryProto`` (dtype, shape, shard,
offset, size); the tensor bytes are raw little-endian at that offset of the data shard. Only
the pieces of the two formats that tensor bundles use are parsed here.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ...errors import ModelNotFoundError

# The last 8 bytes of every LevelDB table ("table_magic_number" in leveldb/table/format.h).
_TABLE_MAGIC = 0xDB4775248B80FB57
# Footer = two BlockHandles (<= 20 bytes of varints each, zero-padded to 40) + 8-byte magic.
_FOOTER_BYTES = 48
# Every block is followed by 1 byte of compression type and a 4-byte crc.
_BLOCK_TRAILER_BYTES = 5
# tensorflow/core/framework/types.proto DataType -> numpy dtype (the ones weights use).
_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),
    2: np.dtype("<f8"),
    3: np.dtype("<i4"),
    9: np.dtype("<i8"),
    10: np.dtype("bool"),
    19: np.dtype("<f2"),
}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a protobuf/LevelDB varint at ``pos``; returns (value, next position)."""
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _block(data: bytes, offset: int, size: int, where: Path) -> bytes:
    if data[offset + size] != 0:  # compression type byte; tensor bundles are never compressed
        raise ModelNotFoundError(f"{where}: compressed checkpoint index blocks are not supported")
    return data[offset : offset + size]


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of one table block (keys are prefix-compressed)."""
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * num_restarts
    pos, key, out = 0, b"", []
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        out.append((key, block[pos : pos + value_len]))
        pos += value_len
    return out


def _fields(msg: bytes) -> list[tuple[int, int, int | bytes]]:
    """Protobuf wire-format fields of a message as (field number, wire type, value)."""
    pos, out = 0, []
    while pos < len(msg):
        tag, pos = _varint(msg, pos)
        number, wire = tag >> 3, tag & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(msg, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", msg, pos)[0], pos + 8
        elif wire == 2:
            length, pos = _varint(msg, pos)
            value, pos = msg[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = struct.unpack_from("<I", msg, pos)[0], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((number, wire, value))
    return out


def _entry(msg: bytes) -> tuple[int, tuple[int, ...], int, int, int]:
    """BundleEntryProto -> (dtype, shape, shard_id, offset, size)."""
    dtype = shard = offset = size = 0
    shape: list[int] = []
    for number, _, value in _fields(msg):
        if number == 1:
            dtype = int(value)  # type: ignore[arg-type]
        elif number == 2:  # TensorShapeProto: repeated Dim dim = 2 {int64 size = 1}
            for n2, _, dim in _fields(value):  # type: ignore[arg-type]
                if n2 == 2:
                    shape.append(next((int(v) for n3, _, v in _fields(dim) if n3 == 1), 0))  # type: ignore[arg-type]
        elif number == 3:
            shard = int(value)  # type: ignore[arg-type]
        elif number == 4:
            offset = int(value)  # type: ignore[arg-type]
        elif number == 5:
            size = int(value)  # type: ignore[arg-type]
        elif number == 7:
            raise ValueError("partitioned (sliced) checkpoint variables are not supported")
    return dtype, tuple(shape), shard, offset, size


def read_checkpoint(prefix: str | Path) -> dict[str, np.ndarray]:
    """All float/int variables of the checkpoint ``prefix`` (e.g. ``.../variables/variables``).

    Keys are the checkpoint's own (``layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE``
    for object-based checkpoints); string-typed entries such as the object graph are skipped.
    A missing, truncated or foreign file is a ModelNotFoundError.
    """
    try:
        return _read_checkpoint(Path(prefix))
    except (IndexError, ValueError, struct.error, UnicodeDecodeError) as e:
        raise ModelNotFoundError(f"{prefix}: corrupt TensorFlow checkpoint ({e})") from e


def _read_checkpoint(prefix: Path) -> dict[str, np.ndarray]:
    index_path = prefix.with_name(prefix.name + ".index")
    if not index_path.is_file():
        raise ModelNotFoundError(f"{index_path}: checkpoint index not found")
    data = index_path.read_bytes()
    if (
        len(data) < _FOOTER_BYTES
        or struct.unpack_from("<Q", data, len(data) - 8)[0] != _TABLE_MAGIC
    ):
        raise ModelNotFoundError(f"{index_path}: not a TensorFlow checkpoint index")
    footer = data[len(data) - _FOOTER_BYTES :]
    _, pos = _varint(footer, 0)  # metaindex handle offset (unused)
    _, pos = _varint(footer, pos)  # metaindex handle size
    index_offset, pos = _varint(footer, pos)
    index_size, _ = _varint(footer, pos)

    entries: dict[str, tuple[int, tuple[int, ...], int, int, int]] = {}
    num_shards = 1
    for _, handle in _block_entries(_block(data, index_offset, index_size, index_path)):
        offset, p = _varint(handle, 0)
        size, _ = _varint(handle, p)
        for key, value in _block_entries(_block(data, offset, size, index_path)):
            if key == b"":  # BundleHeaderProto {int32 num_shards = 1; ...}
                num_shards = next((int(v) for n, _, v in _fields(value) if n == 1), 1)  # type: ignore[arg-type]
                continue
            entries[key.decode()] = _entry(value)

    shards: dict[int, np.memmap] = {}
    out: dict[str, np.ndarray] = {}
    for key, (dtype, shape, shard, offset, size) in entries.items():
        if dtype not in _DTYPES:
            continue
        if shard not in shards:
            path = prefix.with_name(f"{prefix.name}.data-{shard:05d}-of-{num_shards:05d}")
            if not path.is_file():
                raise ModelNotFoundError(f"{path}: checkpoint data shard not found")
            shards[shard] = np.memmap(path, dtype=np.uint8, mode="r")
        raw = shards[shard][offset : offset + size]
        if raw.size != size:
            raise ValueError(f"{key} runs past the end of its data shard")
        # Copy out of the memmap (writable, and the file is not held open by the results).
        out[key] = np.array(raw).view(_DTYPES[dtype]).reshape(shape)
    return out
