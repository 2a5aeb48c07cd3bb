"""The file of one result kept for every worker (service/results_shared.py): its layout, written and read.

A fixed prefix (a magic number and the owner: the fingerprint of the API key that stored the result, which
`owner_of` reads from the first bytes alone, as cheaply as a stat), then a header of part sizes, the pickle of
(labels, created, model_sha256) without the arrays' bytes, those bytes, and the upload. A file without the prefix
is one written before results had owners, read as ownerless: where the service has keys, no key reads it. A pickle
of (labels, created) alone is one written before results recorded their model, read with none recorded.
"""

from __future__ import annotations

import pickle
import re
import struct

from .results_cache import StoredResult

# A result file's name: what `new_result_id` makes; anything else in the directory is not a file of ours.
RESULT_FILE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# A file is written after its result's `created`, so one modified a TTL ago is expired; a second's grace beyond it,
# as file times lag the clock by up to a tick.
MTIME_GRACE_S = 1.0
MAGIC = b"SRK1"
OWNER_BYTES = 16  # service/middleware.py `key_fingerprint`
# The magic, the owner's length (0: none) and the owner, padded to its fixed size.
_PREFIX = struct.Struct(f"<4sB{OWNER_BYTES}s")
PREFIX_BYTES = _PREFIX.size


def serialised(item: StoredResult) -> list[bytes | memoryview]:
    """The file's parts, in order, to be written whole (`os.writev`)."""
    owner = item.owner or b""
    if len(owner) > OWNER_BYTES:
        raise ValueError(f"an owner is at most {OWNER_BYTES} bytes, not {len(owner)}")
    buffers: list[pickle.PickleBuffer] = []
    meta = pickle.dumps((item.labels, item.created, item.model_sha256), protocol=5, buffer_callback=buffers.append)
    parts: list[bytes | memoryview] = [meta, *(buffer.raw() for buffer in buffers), item.source]
    header = struct.pack(f"<I{len(parts)}Q", len(parts), *(len(part) for part in parts))
    return [_PREFIX.pack(MAGIC, len(owner), owner), header, *parts]


def owner_of(head: bytes) -> bytes | None:
    """The owner recorded in a file's first `PREFIX_BYTES` bytes (None: none, or a file without the prefix)."""
    if len(head) < PREFIX_BYTES or head[:len(MAGIC)] != MAGIC:
        return None
    _, size, owner = _PREFIX.unpack_from(head)
    return owner[:size] or None


def deserialised(data: bytes) -> StoredResult:
    """The inverse of `serialised`; the arrays are read-only views of `data`."""
    view = memoryview(data)
    owner, offset = None, 0
    if view[:len(MAGIC)] == MAGIC:
        owner, offset = owner_of(bytes(view[:PREFIX_BYTES])), PREFIX_BYTES
    (count,) = struct.unpack_from("<I", view, offset)
    sizes = struct.unpack_from(f"<{count}Q", view, offset + 4)
    offset += 4 + 8 * count
    parts = []
    for size in sizes:
        parts.append(view[offset:offset + size])
        offset += size
    meta, *buffers, source = parts
    # Unpickling files this service wrote itself, in its private (0700) directory.
    labels, created, *rest = pickle.loads(meta, buffers=buffers)
    model_sha256 = rest[0] if rest else None  # an older file's two-element pickle: no model recorded
    return StoredResult(labels, bytes(source), created, owner, model_sha256)
