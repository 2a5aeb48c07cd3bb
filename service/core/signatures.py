"""The leading bytes of the image formats the service decodes. Standard library only: the client (installed without
the server's codecs) tells an encoded file from pixels with it, the server a corrupt image (400) from no image (415)."""

from __future__ import annotations

SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG / MPO
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"II*\x00",  # TIFF little-endian
    b"MM\x00*",  # TIFF big-endian
    b"II+\x00",  # BigTIFF
    b"MM\x00+",
)
# "BM" alone would match plain text: a BMP also needs one of the known DIB header sizes after its file header.
BMP_HEADER_SIZES = (12, 16, 40, 52, 56, 64, 108, 124)
# Enough of a file to tell: the BMP's DIB header size ends at byte 18.
HEAD_BYTES = 18


def has_image_signature(data: bytes) -> bool:
    """Whether `data` starts as one of the decoded formats does."""
    if data.startswith(SIGNATURES):
        return True
    if data[:2] == b"BM":
        return int.from_bytes(data[14:18], "little") in BMP_HEADER_SIZES
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"
