"""Images with embedded ICC profiles for the tests: profiles built byte by byte (Pillow's LittleCMS creates only
sRGB, LAB and XYZ ones), pixels stored in them, and checks of the colours an image shows.

The builder writes minimal matrix/TRC display profiles (ICC v2 with `curv` tables or gammas, v4 with the
parametric sRGB curve) from a colour space's primaries and white point, as Display P3, Adobe RGB, ProPhoto and the
sRGB variants are made.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image, ImageCms

D50 = np.array([0.9642, 1.0, 0.8249])
D65_XY = (0.3127, 0.3290)
_BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])
SRGB_PRIMARIES = ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06))
P3_PRIMARIES = ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060))
ADOBE_PRIMARIES = ((0.64, 0.33), (0.21, 0.71), (0.15, 0.06))
PROPHOTO_PRIMARIES = ((0.7347, 0.2653), (0.1596, 0.8404), (0.0366, 0.0001))


def _xyz(xy: tuple[float, float]) -> np.ndarray:
    x, y = xy
    return np.array([x / y, 1.0, (1 - x - y) / y])


def rgb_to_xyz(primaries: tuple[tuple[float, float], ...], white: tuple[float, float]) -> np.ndarray:
    """Linear RGB -> XYZ (white Y = 1) of a colour space, in its own white point."""
    columns = np.stack([_xyz(p) for p in primaries], axis=1)
    return columns * np.linalg.solve(columns, _xyz(white))


def _to_d50(white: tuple[float, float]) -> np.ndarray:
    """Bradford chromatic adaptation from `white` to the ICC's D50."""
    scale = (_BRADFORD @ D50) / (_BRADFORD @ _xyz(white))
    return np.linalg.inv(_BRADFORD) @ np.diag(scale) @ _BRADFORD


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _padded(body: bytes) -> bytes:
    return body + b"\0" * (-len(body) % 4)


def xyz_tag(xyz: np.ndarray) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(v) for v in xyz)


def gamma_curve(gamma: float) -> bytes:
    return _padded(b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)))


def table_curve(values: np.ndarray) -> bytes:
    entries = b"".join(struct.pack(">H", round(float(v) * 65535)) for v in values)
    return _padded(b"curv\0\0\0\0" + struct.pack(">I", len(values)) + entries)


def srgb_parametric_curve() -> bytes:
    """The sRGB TRC as an ICC parametric curve (function type 3)."""
    params = (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)
    return b"para\0\0\0\0" + struct.pack(">HH", 3, 0) + b"".join(_s15(v) for v in params)


def srgb_decode(v: np.ndarray) -> np.ndarray:
    """sRGB-encoded 0..1 to linear light."""
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def srgb_encode(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0.0, 1.0)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055)


def _text(text: str, version: int) -> bytes:
    if version >= 4:  # multiLocalizedUnicodeType, one en-US record
        utf16 = text.encode("utf-16-be")
        return _padded(b"mluc\0\0\0\0" + struct.pack(">II", 1, 12) + b"enUS" + struct.pack(">II", len(utf16), 28)
                       + utf16)
    ascii_ = text.encode() + b"\0"  # textDescriptionType: ASCII, then empty Unicode and ScriptCode parts
    return _padded(b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_ + struct.pack(">IIHB", 0, 0, 0, 0)
                   + b"\0" * 67)


def assemble(space: bytes, tags: list[tuple[bytes, bytes]], version: int = 2) -> bytes:
    """A display-class ICC profile of colour space `space` (b"RGB ", b"GRAY") from (signature, body) tags."""
    start = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        table += signature + struct.pack(">II", start + len(data), len(body))
        data += _padded(body)
    version_field = 0x04300000 if version >= 4 else 0x02100000
    header = (struct.pack(">I", start + len(data)) + b"lcms" + struct.pack(">I", version_field) + b"mntr" + space
              + b"XYZ " + struct.pack(">6H", 2024, 1, 1, 0, 0, 0) + b"acsp" + b"APPL" + b"\0" * 20
              + struct.pack(">I", 0) + b"".join(_s15(v) for v in D50) + b"test" + b"\0" * 44)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def rgb_profile(name: str, primaries: tuple[tuple[float, float], ...], white: tuple[float, float], trc: bytes,
                version: int = 2, padding: int = 0) -> bytes:
    """A matrix/TRC RGB display profile: the colorants adapted to D50, the same TRC for the three channels;
    `padding` bytes of an extra private tag make it larger (split over several JPEG APP2 segments)."""
    adapt = _to_d50(white)
    colorants = adapt @ rgb_to_xyz(primaries, white)
    tags = [(b"desc", _text(name, version)), (b"wtpt", xyz_tag(D50))]
    tags += [(sig, xyz_tag(colorants[:, i])) for i, sig in enumerate((b"rXYZ", b"gXYZ", b"bXYZ"))]
    tags += [(sig, trc) for sig in (b"rTRC", b"gTRC", b"bTRC")]
    if version >= 4:
        tags.append((b"chad", b"sf32\0\0\0\0" + b"".join(_s15(v) for v in adapt.ravel())))
    if padding:
        tags.append((b"zzzz", b"\0" * padding))
    tags.append((b"cprt", _text("No copyright, test profile", version)))
    return assemble(b"RGB ", tags, version)


def grey_profile(name: str, trc: bytes) -> bytes:
    """A greyscale display profile with TRC `trc`."""
    return assemble(b"GRAY", [(b"desc", _text(name, 2)), (b"wtpt", xyz_tag(D50)), (b"kTRC", trc)])


def cmyk_profile(name: str) -> bytes:
    """An output (printer) CMYK profile whose A2B0 (an `mft2` LUT, 2 grid points a channel, XYZ PCS) says what a
    naive press does: each ink takes its share of light away, black from all three (C, M, Y, K in 0..1:
    linear R = (1 - C)(1 - K), ...), in sRGB's primaries."""
    to_xyz = _to_d50(D65_XY) @ rgb_to_xyz(SRGB_PRIMARIES, D65_XY)
    grid = []
    for c, m, y, k in np.ndindex(2, 2, 2, 2):  # the first input channel varies slowest, as ICC orders a CLUT
        linear = np.array([(1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k)])
        grid += [round(v * 32768) for v in to_xyz @ linear]  # XYZ as u1Fixed15
    identity = (1, 0, 0, 0, 1, 0, 0, 0, 1)
    lut = (b"mft2\0\0\0\0" + bytes((4, 3, 2, 0)) + b"".join(_s15(v) for v in identity) + struct.pack(">HH", 2, 2)
           + struct.pack(">8H", *([0, 65535] * 4)) + struct.pack(f">{len(grid)}H", *grid)
           + struct.pack(">6H", *([0, 65535] * 3)))
    profile = assemble(b"CMYK", [(b"desc", _text(name, 2)), (b"wtpt", xyz_tag(D50)), (b"A2B0", lut)])
    return profile[:12] + b"prtr" + profile[16:]


SRGB_TABLE = table_curve(srgb_decode(np.linspace(0, 1, 1024)))
DISPLAY_P3 = rgb_profile("Display P3", P3_PRIMARIES, D65_XY, srgb_parametric_curve(), version=4)
ADOBE_RGB = rgb_profile("Adobe RGB (1998)", ADOBE_PRIMARIES, D65_XY, gamma_curve(563 / 256))
PROPHOTO = rgb_profile("ProPhoto RGB", PROPHOTO_PRIMARIES, (0.3457, 0.3585), gamma_curve(1.8))
GREY_18 = grey_profile("Gray Gamma 1.8", gamma_curve(1.8))
# sRGB as its common variants are made: HP's v2 IEC61966-2.1 (a 1024-entry table), compact v2 ones (a 26-point
# table), v4 ones (Apple, Google: the parametric curve), and LittleCMS's own.
SRGB_VARIANTS = {
    "iec61966-2.1": rgb_profile("sRGB IEC61966-2.1", SRGB_PRIMARIES, D65_XY, SRGB_TABLE),
    "compact-v2": rgb_profile("sRGB built-in", SRGB_PRIMARIES, D65_XY, table_curve(srgb_decode(np.linspace(0, 1, 26)))),
    "v4": rgb_profile("sRGB", SRGB_PRIMARIES, D65_XY, srgb_parametric_curve(), version=4),
    "littlecms": ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(),
}
GREY_SRGB = grey_profile("sGray", SRGB_TABLE)
NAIVE_CMYK = cmyk_profile("Naive CMYK")


def from_srgb(rgb: np.ndarray, profile: bytes) -> np.ndarray:
    """The numbers an image in `profile` stores for sRGB colours `rgb` (H×W×3 uint8): LittleCMS's sRGB -> profile."""
    srgb = ImageCms.createProfile("sRGB")
    target = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    return np.asarray(ImageCms.profileToProfile(Image.fromarray(rgb), srgb, target, outputMode="RGB"))


# Saturated colours inside both gamuts, where Display P3's numbers differ most from sRGB's.
RED, GREEN, BLUE = (220, 30, 30), (30, 200, 40), (40, 60, 200)


def patches(height: int = 96, width: int = 128) -> np.ndarray:
    """Flat red, green, blue and grey quarters (flat, so JPEG keeps them within a level or two)."""
    img = np.empty((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    img[:h, :w], img[:h, w:], img[h:, :w], img[h:, w:] = RED, GREEN, BLUE, (128, 128, 128)
    return img


def centres(rgb: np.ndarray) -> np.ndarray:
    """The mean colour of the middle of each quarter (away from JPEG's edges between them)."""
    h, w = rgb.shape[0] // 2, rgb.shape[1] // 2
    dh, dw = h // 4, w // 4
    boxes = [(0, 0), (0, w), (h, 0), (h, w)]
    return np.array([rgb[y + dh : y + h - dh, x + dw : x + w - dw].reshape(-1, 3).mean(0) for y, x in boxes])


def encoded(pixels: np.ndarray, fmt: str, profile: bytes | None, mode: str = "RGB", **kw: object) -> bytes:
    img = Image.fromarray(pixels).convert(mode)
    if profile is not None:
        kw["icc_profile"] = profile
    if fmt == "JPEG":
        kw = {"quality": 98, "subsampling": 0, **kw}
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def assert_shows(decoded: np.ndarray, expected: np.ndarray, tolerance: float) -> None:
    assert np.abs(centres(decoded) - centres(expected)).max() <= tolerance, (centres(decoded), centres(expected))


def shown(data: bytes) -> np.ndarray:
    """The sRGB colours a colour-managed viewer shows for image file `data`: its pixels through its embedded RGB
    profile (LittleCMS), as they are without one."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    profile = Image.open(io.BytesIO(data)).info.get("icc_profile")
    if not profile:
        return np.asarray(img)
    source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    return np.asarray(ImageCms.profileToProfile(img, source, ImageCms.createProfile("sRGB"), outputMode="RGB"))
