"""OpenAI's CLIP checkpoints, downloaded once into a cache folder and SHA256-verified: a partial or corrupt file
is never used."""

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from http.client import HTTPException

from tqdm import tqdm

from utils.errors import UserError

__all__ = ["OPENAI_URLS", "default_cache_dir", "download_openai", "sha256_of"]

logger = logging.getLogger(__name__)

#: OpenAI's released checkpoints by MODEL.NAME (the URLs of OpenAI's clip.py, ``ViT-B/16``, ``ViT-B/32``,
#: ``ViT-L/14``, ``ViT-L/14@336px``); the SHA256 of each file is its URL's second-to-last segment.
OPENAI_URLS = {
    "ViT-B-16": "https://openaipublic.azureedge.net/clip/models/"
                "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-B-32": "https://openaipublic.azureedge.net/clip/models/"
                "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "ViT-L-14": "https://openaipublic.azureedge.net/clip/models/"
                "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L-14-336px": "https://openaipublic.azureedge.net/clip/models/"
                      "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}

_DOWNLOAD_TIMEOUT = 60  # seconds without data before a download is abandoned
_CHUNK = 1 << 20


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/mhcf``, by default ``~/.cache/mhcf``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mhcf")


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_openai(arch: str = "ViT-B-16", cache_dir: str | None = None) -> str:
    """Path of OpenAI's checkpoint for ``arch`` in ``cache_dir`` (default :func:`default_cache_dir`),
    downloaded first when it is missing or fails its SHA256 check.

    The download goes to a temporary ``.part`` file in the cache folder, is verified, and only then
    renamed to its final name, so an interrupted or corrupt download is never used.
    """
    if arch not in OPENAI_URLS:
        raise UserError(f"MODEL.PRETRAIN_PATH 'openai' has weights for MODEL.NAME {', '.join(OPENAI_URLS)} only, "
                        f"not {arch!r}; use a local file or '' (random initialisation)")
    url = OPENAI_URLS[arch]
    expected = url.rsplit("/", 2)[-2]
    folder = cache_dir or default_cache_dir()
    target = os.path.join(folder, url.rsplit("/", 1)[-1])
    if os.path.isfile(target):
        if sha256_of(target) == expected:
            return target
        logger.warning("%s fails its SHA256 check (a partial or corrupt file): downloading it again", target)
    os.makedirs(folder, exist_ok=True)
    fd, part = tempfile.mkstemp(prefix=os.path.basename(target) + ".", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _fetch(url, out, target)
        if digest != expected:
            raise UserError(f"the download of {url} has SHA256 {digest}, expected {expected}: it was discarded; "
                            f"try again, or put a verified copy of the file at {target}")
        os.replace(part, target)
    finally:
        if os.path.exists(part):
            os.remove(part)
    logger.info("downloaded %s to %s (SHA256 verified)", url, target)
    return target


def _fetch(url: str, out, target: str) -> str:
    """Stream ``url`` into the open file ``out``; return the SHA256 of what was written."""
    digest = hashlib.sha256()
    logger.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(target), leave=False) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UserError(f"cannot download {url} ({reason}); without network, fetch the file elsewhere and put "
                        f"it at {target} (MODEL.PRETRAIN_CACHE sets the folder), or set MODEL.PRETRAIN_PATH to "
                        f"a local copy") from None
    return digest.hexdigest()
