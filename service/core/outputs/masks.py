"""Raster outputs: the class-id palette PNG, the colour PNG and the overlay blended over the input.

Speed notes (1024×768 VOC-style mask, 2-core CPU; see the report in the commit history for the numbers):
- Colourising goes through Pillow's palette → RGB conversion (a C lookup, ~2 ms) instead of numpy fancy
  indexing `lut[labels]` (~17 ms), and colours the model-size map, then resizes the colours (`colour_map`).
- PNGs use zlib's Z_RLE strategy: label maps are long runs, so RLE compresses them to about the size of zlib
  level 6 at a tenth of the time, and the level barely matters. The palette PNG is written by
  `service.outputs.png` (~0.3 ms against Pillow's ~1.9 ms).
- The RGB colour PNG is written by `service.outputs.png` too, from the model's rows coloured once (~2.6 ms with
  the colouring, against ~8.5 ms through OpenCV's libpng and ~40 ms for Pillow's adaptive filter search).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

from service.core.icc import colours_from_srgb
from service.core.letterbox import resize_nearest
from service.core.outputs.labelmap import LabelMap, as_label_map
from service.core.outputs.png import encode_palette_png, encode_rgb_png, with_icc_profile

# With Z_RLE the zlib level changes size and time by a few percent only; 1 keeps the worst case (noisy maps)
# cheap.
DEFAULT_PNG_COMPRESS_LEVEL = 1
DEFAULT_JPEG_QUALITY = 90

Palette = Sequence[Sequence[int]]


def palette_lut(palette: Palette) -> np.ndarray:
    """A (256, 3) uint8 lookup table: row i is the colour of class i; ids beyond the palette are black.

    `lut[labels]` colourises a label map with numpy; `colorize` does the same several times faster.
    """
    lut = np.zeros((256, 3), dtype=np.uint8)
    colours = np.asarray(palette, dtype=np.int64).reshape(-1, 3)[:256]
    if colours.size and (colours.min() < 0 or colours.max() > 255):
        raise ValueError("palette colours must be in 0..255")
    lut[: len(colours)] = colours
    return lut


def _check_labels(labels: np.ndarray) -> None:
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"labels must be a 2-D uint8 array, got {labels.dtype} {labels.shape}")


def _palette_image(labels: np.ndarray, lut: np.ndarray, n_colours: int = 256) -> Image.Image:
    img = Image.fromarray(np.ascontiguousarray(labels))  # mode "L"; putpalette makes it "P" in place
    img.putpalette(lut[:n_colours].tobytes(), rawmode="RGB")
    return img


def colorize(labels: np.ndarray, palette: Palette) -> np.ndarray:
    """H×W×3 uint8 RGB image of the class colours."""
    _check_labels(labels)
    return np.asarray(_palette_image(labels, palette_lut(palette)).convert("RGB"))


def colour_map(labels: np.ndarray | LabelMap, palette: Palette) -> np.ndarray:
    """The class colours at the map's final size, as `colorize(labels.full)` gives them, byte for byte.

    The colours of a nearest-neighbour resized map are the nearest-neighbour resized colours, so the smaller of
    the model's map and the final map is coloured and then resized like `LabelMap.full` (`bench.colour_bench`,
    1024×768 answers of the embedded 320 model, the map's way back to full size included: 1.75 CPU-ms colouring
    the full map, 1.10 colouring the model's and resizing the colours).
    """
    label_map = as_label_map(labels)
    height, width = label_map.shape
    if label_map.small.size >= height * width:
        return colorize(label_map.full, palette)
    return resize_nearest(colorize(label_map.small, palette), width, height)


def encode_labels_png(labels: np.ndarray | LabelMap, palette: Palette) -> bytes:
    """A palette ("P" mode) PNG whose pixel values are the class ids, as VOC ground truth is stored.

    The PLTE chunk holds enough colours for both the palette and the largest id present, so models with 16
    classes or fewer get a 4-bit PNG. Written by `service.outputs.png` from the model-size map.
    """
    labels = as_label_map(labels)
    n_colours = max(len(palette), labels.max_id + 1)
    return encode_palette_png(labels, palette_lut(palette)[: min(256, max(1, n_colours))])


def encode_color_png(
    labels: np.ndarray | LabelMap, palette: Palette, *, compress_level: int = DEFAULT_PNG_COMPRESS_LEVEL
) -> bytes:
    """An RGB PNG with every pixel painted in its class colour: each model row is coloured once at the final
    width, and the PNG repeats it (`encode_rgb_png`)."""
    wide, rows = as_label_map(labels).wide_rows()
    return encode_rgb_png(colorize(wide, palette), rows, compress_level)


def blend_overlay(
    image: np.ndarray, labels: np.ndarray | LabelMap, palette: Palette, alpha: float, *,
    blend_background: bool = False
) -> np.ndarray:
    """`image·(1−alpha) + colour·alpha`; background (class 0) pixels keep the input unless `blend_background`."""
    label_map = as_label_map(labels)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 HxWx3, got {image.dtype} {image.shape}")
    if image.shape[:2] != label_map.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {label_map.shape} differ in size")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within 0..1, got {alpha}")
    colour = colour_map(label_map, palette)
    # cv2.addWeighted is a rounding, saturating SIMD blend, far faster than float numpy on large images.
    blended = cv2.addWeighted(image, 1.0 - alpha, colour, alpha, 0.0)
    if not blend_background:
        cv2.copyTo(image, (label_map.full == 0).view(np.uint8), blended)  # ~0.2 ms; np.copyto(where=) takes ~14 ms
    return blended


def encode_overlay(
    image: np.ndarray,
    labels: np.ndarray | LabelMap,
    palette: Palette,
    alpha: float,
    fmt: str = "jpeg",
    *,
    blend_background: bool = False,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    compress_level: int = DEFAULT_PNG_COMPRESS_LEVEL,
    icc_profile: bytes | None = None,
) -> bytes:
    """The class colours blended over the input image, as JPEG (default) or PNG.

    Background (class 0) is left unblended by default so the photo stays readable; `blend_background=True`
    tints it too. `fmt` is "jpeg" (or "jpg") or "png". `icc_profile`: the RGB profile `image`'s numbers are in
    (an upload's, kept by `decode_image_keeping_profile`): the palette's sRGB colours are converted into it, and
    the file carries it, so a colour-managed viewer shows the photo as the upload and the classes in their sRGB
    colours. None: `image` is sRGB and the file carries no profile.
    """
    fmt = fmt.lower()
    if fmt not in ("jpeg", "jpg", "png"):
        raise ValueError(f"overlay format must be 'jpeg' or 'png', got {fmt!r}")
    if icc_profile is not None:  # only the palette's few colours go through LittleCMS
        palette = colours_from_srgb(palette_lut(palette)[: min(256, len(palette))], icc_profile)
    blended = blend_overlay(image, labels, palette, alpha, blend_background=blend_background)
    if fmt == "png":
        # a photo: zlib's default strategy with libpng's adaptive filters suits it better than RLE
        ok, buf = cv2.imencode(".png", cv2.cvtColor(blended, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
        if not ok:
            raise RuntimeError("OpenCV failed to encode the overlay PNG")
        return buf.tobytes() if icc_profile is None else with_icc_profile(buf.tobytes(), icc_profile)
    out = io.BytesIO()
    extra = {} if icc_profile is None else {"icc_profile": icc_profile}
    Image.fromarray(blended).save(out, format="JPEG", quality=jpeg_quality, **extra)
    return out.getvalue()
