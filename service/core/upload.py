"""An upload opened for decoding: the structure checks and the header read, run once per upload.

`open_upload` runs what every decode does before a pixel is decoded: `structure.check_structure`, Pillow's header
parse (only the accepted formats' parsers), the size and pixel limits and the JPEG scan guard. It keeps the opened
image in an `Upload`, which `service.core.decode` decodes as it would the bytes, so that a caller who must know
the decode's size first (the service, choosing the thread pool a decode runs in) does not pay for the checks and
the header twice. Failures are `DecodeError`s, as `service.core.decode` documents them.
"""

from __future__ import annotations

import io
from types import TracebackType

from PIL import Image, ImageFile, UnidentifiedImageError

from . import jpeg
from .errors import DecodeError
from .signatures import has_image_signature
from .structure import check_structure

# Pillow format names we decode. Multi-picture JPEGs (MPO, as many phones write) open through the JPEG plugin.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")

# Register every Pillow plugin now, at import, rather than lazily inside the first worker threads.
Image.init()


def decode_failure(exc: Exception, what: str) -> DecodeError:
    """The client-facing error for an exception Pillow raised while parsing or decoding."""
    # Pillow refuses zlib-compressed metadata (zTXt/iTXt/iCCP) that inflates past its limits with a plain
    # ValueError; that is a decompression bomb too.
    # A flood of text chunks, each within the per-chunk limit, trips Pillow's total text budget instead.
    bomb = isinstance(exc, Image.DecompressionBombError) or (
        isinstance(exc, ValueError)
        and ("Decompressed data too large" in str(exc) or "Too much memory used in text chunks" in str(exc))
    )
    if bomb:
        return DecodeError("image_too_large", f"image refused as a decompression bomb: {exc}")
    if isinstance(exc, MemoryError):
        return DecodeError("image_too_large", "the image does not fit in memory")
    if isinstance(exc, UnidentifiedImageError):
        return DecodeError("corrupt_image", what)  # its message only names the BytesIO object
    return DecodeError("corrupt_image", f"{what}: {exc}")


class Upload:
    """Upload bytes past the structure checks and the header limits, their header read into `image` (an opened
    Pillow image, no pixel decoded yet). Decoding it (`service.core.decode`) closes it; one that is not decoded is
    closed with `close` or a `with` block."""

    def __init__(self, data: bytes, image: Image.Image) -> None:
        self.data = data
        self.image = image
        # The longest its decode waits for room in the decode memory budget (None: the budget's own bound): a
        # request's own deadline, set once the header is read (service/routes/segment.py).
        self.memory_wait_s: float | None = None

    @property
    def is_jpeg(self) -> bool:
        """Whether it decodes through the JPEG paths (JPEG or MPO)."""
        return self.image.format in ("JPEG", "MPO")

    @property
    def pixels(self) -> int:
        """Pixels of the image at full size (as stored, before any EXIF turn)."""
        width, height = self.image.size
        return width * height

    def close(self) -> None:
        """Release the opened image (idempotent)."""
        self.image.close()

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def open_upload(data: bytes, max_pixels: int) -> Upload:
    """Run the structure checks and read the header of untrusted image bytes; raise `DecodeError` (400
    `empty_body` / `corrupt_image`, 415 `unsupported_media_type`, 413 `image_too_large`) as the decode would."""
    if not data:
        raise DecodeError("empty_body", "the request carried no image bytes")
    # Pillow's module-level LOAD_TRUNCATED_IMAGES must stay False, or truncated files decode as grey padding.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; truncated uploads would be accepted")

    # Before Pillow parses a single marker, chunk or strip: floods of them cost seconds in its Python parsers.
    check_structure(data, max_pixels)
    try:
        img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise DecodeError("image_too_large", f"image refused as a decompression bomb: {exc}") from exc
    except Exception as exc:  # any parser failure on hostile bytes is the client's problem, not a 500
        error = decode_failure(exc, "the image header is corrupt or truncated")
        if error.code == "corrupt_image" and not has_image_signature(data):
            # Pillow tried a plugin on a loose match (e.g. text starting with "BM") or found nothing at all.
            error = DecodeError("unsupported_media_type",
                f"not a supported image; send one of: {', '.join(f.lower() for f in ACCEPTED_FORMATS)}",
            )
        raise error from exc
    try:
        _check_header(img, data, max_pixels)
    except BaseException:
        img.close()
        raise
    return Upload(data, img)


def _check_header(img: Image.Image, data: bytes, max_pixels: int) -> None:
    """The limits checked on the header, before a single pixel is decoded: the bomb never gets its memory."""
    width, height = img.size
    if width <= 0 or height <= 0:
        raise DecodeError("corrupt_image", f"the image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise DecodeError("image_too_large",
            f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}",
        )
    if img.format in ("JPEG", "MPO"):
        # Every progressive scan re-walks the whole image: refuse absurd scan counts before decoding.
        limit = jpeg.scan_limit(width * height)
        scans = jpeg.count_scans(data, limit)
        if scans > limit:
            raise DecodeError("image_too_large",
                           f"the JPEG has more than {limit} scans, the limit for {width}x{height}")
