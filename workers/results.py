"""Encode generated images for storage, each carrying what made it.

Every format carries two things:

* the AUTOMATIC1111 "infotext" that A1111, Civitai and most image viewers parse
  (``olss_core.image_parameters``). PNG: the text chunk ``parameters``; JPEG and WebP: the EXIF
  ``UserComment`` (``UNICODE`` prefix, UTF-16BE, as A1111 writes it).
* the full ``ImageParameters`` JSON: PNG text chunk ``olss-parameters``; JPEG and WebP: an XMP
  packet (``olss:parameters``), whose ``dc:description`` holds the infotext too.

``read_parameters`` reads the JSON back from any of the three formats, and from PNGs written
before the infotext (their ``parameters`` chunk held the JSON).
"""

from __future__ import annotations

import io
from xml.etree import ElementTree
from xml.sax.saxutils import escape, quoteattr

from PIL import Image
from pydantic import ValidationError

from olss_core.image_parameters import ImageParameters
from workers.png_encoding import encode_png

PNG_INFOTEXT_KEY = "parameters"
PNG_PARAMETERS_KEY = "olss-parameters"
LOSSY_QUALITY = 90
EXIF_IFD = 0x8769
USER_COMMENT = 0x9286
UNICODE_PREFIX = b"UNICODE\x00"
"""EXIF UserComment character code for UTF-16 text (EXIF 2.32, 4.6.5; big-endian as A1111)."""
XMP_NAMESPACE = "urn:olss-serve:parameters:1"
RDF_NAMESPACE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"


def _xmp(parameters: ImageParameters) -> bytes:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="{RDF_NAMESPACE}">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
        f'xmlns:olss="{XMP_NAMESPACE}" olss:parameters={quoteattr(parameters.model_dump_json())}>'
        '<dc:description><rdf:Alt><rdf:li xml:lang="x-default">'
        f"{escape(parameters.infotext())}</rdf:li></rdf:Alt></dc:description>"
        '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode()


def _exif(parameters: ImageParameters) -> Image.Exif:
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = (
        UNICODE_PREFIX + parameters.infotext().encode("utf-16-be")
    )
    return exif


def encode_image(
    image: Image.Image, fmt: str, parameters: ImageParameters, png_compress_level: int
) -> bytes:
    """``image`` as ``fmt`` bytes, with ``parameters`` embedded (see the module docstring).

    ``png_compress_level`` is zlib's level (0-9) for a PNG: it trades encoding time for file
    size only, the pixels are the same at every level (``OLSS_PNG_COMPRESS_LEVEL``).
    """
    if fmt == "png":
        texts = {PNG_INFOTEXT_KEY: parameters.infotext(),
                 PNG_PARAMETERS_KEY: parameters.model_dump_json()}
        return encode_png(image, texts, png_compress_level)
    buffer = io.BytesIO()
    if fmt in ("jpeg", "webp"):
        image.convert("RGB").save(
            buffer, format=fmt.upper(), quality=LOSSY_QUALITY, exif=_exif(parameters),
            xmp=_xmp(parameters),
        )
    else:
        raise ValueError(f"unknown output format {fmt!r}; expected png, jpeg or webp")
    return buffer.getvalue()


def read_infotext(data: bytes) -> str:
    """The A1111 infotext embedded by ``encode_image`` in a PNG, JPEG or WebP."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "PNG":
            return image.text[PNG_INFOTEXT_KEY]
        comment = image.getexif().get_ifd(EXIF_IFD)[USER_COMMENT]
    return comment.removeprefix(UNICODE_PREFIX).decode("utf-16-be")


def read_parameters(data: bytes) -> ImageParameters:
    """The parameters embedded by ``encode_image`` in a PNG, JPEG or WebP (or by its
    predecessor, which stored the JSON in a PNG's ``parameters`` chunk)."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "PNG":
            text = image.text
            raw = text.get(PNG_PARAMETERS_KEY)
            if raw is None:
                return _legacy_png(text)
            return ImageParameters.model_validate_json(raw)
        xmp = image.info.get("xmp", b"")
    attribute = f"{{{XMP_NAMESPACE}}}parameters"
    for element in ElementTree.fromstring(xmp).iter(f"{{{RDF_NAMESPACE}}}Description"):
        if attribute in element.attrib:
            return ImageParameters.model_validate_json(element.attrib[attribute])
    raise ValueError("the image's XMP carries no olss:parameters")


def _legacy_png(text: dict[str, str]) -> ImageParameters:
    try:
        return ImageParameters.model_validate_json(text[PNG_INFOTEXT_KEY])
    except (KeyError, ValidationError) as error:
        raise ValueError("the PNG carries no olss parameters") from error
