"""Embedded ICC profiles of RGB, greyscale and CMYK images: their pixels converted to sRGB, as a browser shows them.

A Display P3 (every iPhone photo), Adobe RGB or ProPhoto picture, or a greyscale one whose grey profile has a
gamma other than sRGB's, read as if its numbers were sRGB looks duller than in any colour-managed viewer. Such
pixels go through LittleCMS (Pillow's `ImageCms`) to sRGB, as CMYK ones with a profile do (`cmyk_to_srgb`, which
`service.core.colour` calls when it makes them RGB).
An overlay keeps an RGB upload's numbers instead (`keeps_profile`): only its class colours go the other way, sRGB
to the profile (`colours_from_srgb`), through an inverse transform built and cached beside the forward one.

- sRGB costs ~nothing: a profile's verdict is cached under the SHA-256 of its bytes (~5 us a lookup for the 7 KB
  IEC61966-2.1 profile; the first sight of a profile, ~3 CPU-ms, parses, builds and probes it), and a profile
  whose conversion moves no probe colour by more than `SRGB_TOLERANCE` levels (every sRGB variant: IEC61966-2.1,
  the compact v2/v4 ones, LittleCMS's own) is left alone: those pixels stay bit-identical.
- A profile that LittleCMS cannot parse or convert, or whose colour space is not the pixels' (a grey profile on
  an RGB JPEG), leaves the numbers as they are (logged at debug); CMYK then takes Pillow's plain conversion: never
  a refusal.
- Bounds: a profile is at most the upload (20 MB by default; a JPEG's is at most 255 APP2 segments, a PNG's
  iCCP inflates to at most Pillow's 1 MB text-chunk limit); over `MAX_PROFILE_BYTES` it is ignored before being
  hashed or parsed. The cache holds `CACHE_SIZE` verdicts keyed by 32-byte digests, each a built 8-bit transform
  (two for an RGB profile: to and from sRGB; each at most a 33^3 table, ~0.2 MB) or a 768-byte grey table,
  never the profile: distinct hostile profiles only evict each other.
- Threads: a transform is built once (under a lock: LittleCMS's profile parsing has had data races) and then
  shared. `cmsDoTransform` on one transform from several threads is safe since LittleCMS 2.3 (each call copies
  the 1-pixel cache); it is built with `Flags.NOCACHE` anyway, which costs nothing measurable here (10.4 ms either
  way for 1024x768). Pillow releases the GIL around the transform itself (~14 ns a pixel), nothing else.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageCms

log = logging.getLogger(__name__)

MAX_PROFILE_BYTES = 4 << 20  # real RGB/grey profiles: 0.4-7 KB (matrix/TRC) up to ~1.5 MB (camera LUTs)
CACHE_SIZE = 32
# Most levels a profile may move a probe colour and still be taken for sRGB. sRGB variants measured 0-1 (a
# 26-point TRC table: 1); Display P3, Adobe RGB, ProPhoto: 115-175; sRGB primaries with a pure 2.2 gamma: 9.
SRGB_TOLERANCE = 2
BLOCK_BYTES = 2 << 20  # Pillow's 4-byte RGB rows per block of a conversion: the extra memory is bounded by this

# Perceptual, as browsers render: for matrix/TRC profiles (Display P3, Adobe RGB, ProPhoto, nearly every RGB
# profile in photos) LittleCMS gives perceptual and relative colorimetric the very same numbers (checked on
# 140 k colours: the colorants are already D50-adapted, the black point is 0); for a LUT-based profile it picks the
# perceptual table (A2B0), the one Chrome's skcms reads. CMYK profiles use the same intent.
INTENT = ImageCms.Intent.PERCEPTUAL
_RGB_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "P", "PA", "YCbCr"})
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_DEVICE_CLASSES = frozenset({"mntr", "scnr", "prtr", "spac"})  # not device links, abstract or named-colour ones


@dataclass(frozen=True, eq=False)
class SrgbConversion:
    """A non-sRGB profile's way to sRGB: a LittleCMS transform (RGB, CMYK) or a table of the 256 grey levels (grey)."""

    space: str  # "RGB", "L" or "CMYK": the pixels' colour space the profile describes
    transform: ImageCms.ImageCmsTransform | None = None
    grey_table: np.ndarray | None = None  # 256x1x3 uint8: the sRGB colour of each grey level
    # RGB only: sRGB -> the profile, for the few class colours an overlay drawn over pixels kept in the profile
    # blends in (`colours_from_srgb`); None when LittleCMS cannot build it (an input-only profile without B2A).
    inverse: ImageCms.ImageCmsTransform | None = None

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """`rgb` (H×W×3 uint8, for grey its R = G = B) in sRGB: in place when writable, else a new array."""
        out = rgb if rgb.flags.writeable else np.empty_like(rgb)
        if self.grey_table is not None:
            return cv2.LUT(rgb, self.grey_table, dst=out)
        assert self.transform is not None
        rows = max(1, BLOCK_BYTES // (4 * max(1, rgb.shape[1])))
        for top in range(0, rgb.shape[0], rows):
            block = Image.fromarray(np.ascontiguousarray(rgb[top : top + rows]))
            self.transform.apply_in_place(block)
            out[top : top + rows] = np.asarray(block)
        return out


class _Verdicts:
    """A small thread-safe LRU: profile digest -> its conversion, or None (sRGB, or unusable)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[bytes, SrgbConversion | None] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> tuple[bool, SrgbConversion | None]:
        with self._lock:
            if key not in self._items:
                return False, None
            self._items.move_to_end(key)
            return True, self._items[key]

    def put(self, key: bytes, value: SrgbConversion | None) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


VERDICTS = _Verdicts(CACHE_SIZE)
_BUILD_LOCK = threading.Lock()


def conversion_for(profile: bytes | None, mode: str) -> SrgbConversion | None:
    """The conversion to sRGB of pixels of Pillow `mode` that carry ICC `profile`; None to keep their numbers (no
    profile, sRGB, over `MAX_PROFILE_BYTES`, unusable, or not the pixels' colour space)."""
    space = "RGB" if mode in _RGB_MODES else "L" if mode in _GREY_MODES else "CMYK" if mode == "CMYK" else None
    if not profile or space is None:
        return None
    if not isinstance(profile, bytes):  # a TIFF's ICC tag typed as numbers gives Pillow's info an int or a tuple
        log.debug("ICC profile of type %s ignored", type(profile).__name__)
        return None
    if len(profile) > MAX_PROFILE_BYTES:
        log.debug("ICC profile of %d bytes ignored (over %d)", len(profile), MAX_PROFILE_BYTES)
        return None
    key = hashlib.sha256(profile).digest()
    found, conversion = VERDICTS.get(key)
    if not found:
        with _BUILD_LOCK:  # one build per profile, also when several decodes meet a new one at once
            found, conversion = VERDICTS.get(key)
            if not found:
                conversion = _build(profile)
                VERDICTS.put(key, conversion)
    if conversion is not None and conversion.space != space:
        log.debug("ICC profile for %s pixels ignored on a %s image", conversion.space, mode)
        return None
    return conversion


def to_srgb(rgb: np.ndarray, profile: bytes | None, mode: str) -> np.ndarray:
    """`rgb` (H×W×3 uint8 from an image of Pillow `mode` carrying ICC `profile`) in sRGB; see `conversion_for`.
    A CMYK image's pixels are sRGB already (`cmyk_to_srgb` made them so): unchanged."""
    conversion = conversion_for(profile, mode)
    return rgb if conversion is None or conversion.space == "CMYK" else conversion.apply(rgb)


def cmyk_to_srgb(img: Image.Image) -> Image.Image | None:
    """A CMYK image in sRGB through its embedded CMYK profile, or None (no usable one). The transform is built
    once per profile and cached: building it on every request (`ImageCms.profileToProfile`) cost ~30 CPU-ms more
    per 1024x768 CMYK JPEG than this (measured: 49.4 -> 27.6 CPU-ms, 19.4 without a profile), more for the large
    LUT profiles of print workflows."""
    conversion = conversion_for(img.info.get("icc_profile"), "CMYK")
    return None if conversion is None or conversion.transform is None else conversion.transform.apply(img)


def keeps_profile(profile: bytes | None, mode: str) -> bool:
    """Whether pixels of Pillow `mode` carrying `profile` may keep their numbers for an overlay (which then
    carries the profile): an RGB profile that is not sRGB and whose way back from sRGB LittleCMS can build. Grey
    profiles never (an RGB overlay cannot carry one; converting is a table lookup)."""
    conversion = conversion_for(profile, mode)
    return conversion is not None and conversion.space == "RGB" and conversion.inverse is not None


def colours_from_srgb(colours: np.ndarray, profile: bytes) -> np.ndarray:
    """sRGB `colours` (N×3 uint8) as the numbers RGB `profile` stores for them (its inverse transform, built
    beside the forward one); unchanged when the profile is sRGB or unusable (`keeps_profile` is False)."""
    colours = np.ascontiguousarray(colours, dtype=np.uint8).reshape(1, -1, 3)
    conversion = conversion_for(profile, "RGB")
    if conversion is None or conversion.inverse is None or not colours.size:
        return colours.reshape(-1, 3)
    return np.asarray(conversion.inverse.apply(Image.fromarray(colours))).reshape(-1, 3)


def _build(profile: bytes) -> SrgbConversion | None:
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        space, device_class = source.profile.xcolor_space.strip(), source.profile.device_class
        if device_class not in _DEVICE_CLASSES or space not in ("RGB", "GRAY", "CMYK"):
            log.debug("ICC profile of class %r for %r pixels: not converted here", device_class, space)
            return None
        # Each transform gets its own sRGB profile object: nothing LittleCMS holds is shared between transforms.
        srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
        if space == "CMYK":  # never sRGB: always converted, through the transform built once per profile
            return SrgbConversion("CMYK", transform=ImageCms.buildTransform(source, srgb, "CMYK", "RGB", INTENT,
                                                                            ImageCms.Flags.NOCACHE))
        if space == "GRAY":
            return _grey(ImageCms.buildTransform(source, srgb, "L", "RGB", INTENT, ImageCms.Flags.NOCACHE))
        conversion = _rgb(ImageCms.buildTransform(source, srgb, "RGB", "RGB", INTENT, ImageCms.Flags.NOCACHE))
    except Exception as exc:  # a broken profile is no reason to refuse the pixels
        log.debug("ICC profile unusable, keeping the pixels' numbers: %s", exc)
        return None
    if conversion is None:
        return None
    # Built now, under the build lock, for non-sRGB RGB profiles only (~2 CPU-ms more on a profile's first sight,
    # measured: Display P3 3 -> 5); converting a 21-colour palette through it then takes ~20 us.
    try:
        inverse = ImageCms.buildTransform(srgb, source, "RGB", "RGB", INTENT, ImageCms.Flags.NOCACHE)
    except Exception as exc:  # an overlay of such an image is then drawn in sRGB, converted at full size
        log.debug("ICC profile has no way back from sRGB: %s", exc)
        return conversion
    return SrgbConversion("RGB", transform=conversion.transform, inverse=inverse)


def _grey(transform: ImageCms.ImageCmsTransform) -> SrgbConversion | None:
    levels = np.arange(256, dtype=np.uint8)
    table = np.asarray(transform.apply(Image.fromarray(levels[None]))).reshape(256, 1, 3)
    if np.abs(table.astype(np.int16) - levels[:, None, None]).max() <= SRGB_TOLERANCE:
        return None  # an sRGB-like grey (the sRGB TRC, "sGray")
    return SrgbConversion("L", grey_table=np.ascontiguousarray(table))


def _probe() -> np.ndarray:
    """Colours to tell sRGB from other profiles: an 18-level grid of the RGB cube, and every level of the greys
    and of each primary (a TRC differs most in the shadows, a gamut most in saturated colours)."""
    steps = np.arange(0, 256, 15, dtype=np.uint8)
    grid = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), axis=-1).reshape(-1, 3)
    levels = np.arange(256, dtype=np.uint8)
    ramps = np.zeros((4, 256, 3), np.uint8)
    ramps[0] = levels[:, None]
    for channel in range(3):
        ramps[channel + 1, :, channel] = levels
    return np.concatenate([grid, ramps.reshape(-1, 3)])[None]


_PROBE = _probe()


def _rgb(transform: ImageCms.ImageCmsTransform) -> SrgbConversion | None:
    moved = np.asarray(transform.apply(Image.fromarray(_PROBE))).astype(np.int16) - _PROBE
    if np.abs(moved).max() <= SRGB_TOLERANCE:
        return None  # sRGB, whichever variant: converting would change no colour visibly, skipping costs nothing
    return SrgbConversion("RGB", transform=transform)
