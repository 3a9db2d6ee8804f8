"""An ImageFolder tree: ``root/<class>/.../<image>``, classes numbered in sorted name order.

Image bytes are stored as they are (the file's own JPEG/PNG/... bytes), so conversion
costs one read per file; only ``reencode`` decodes and re-encodes them with Pillow.
Every file must be an image: anything else is an error, not silently skipped, so a
stray file cannot shift the dataset unnoticed. Hidden files (``.DS_Store``) are ignored.
"""

from __future__ import annotations

import io
import os
import re
from typing import Any, Iterator

import numpy as np

from shardprune.errors import ConfigError, SourceError
from shardprune.format.metadata import check_name
from shardprune.sources.base import BytesSource
from shardprune.sources.sniff import encoding_of, image_ext

REENCODINGS = ("jpg", "png")


def _compile(pattern: str | None) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"path_pattern={pattern!r} is not a regular expression ({exc})") from exc
    if not compiled.groupindex:
        raise ConfigError(f"path_pattern={pattern!r} has no named group; name each column, e.g. (?P<source>[a-z]+)")
    return compiled


def _walk_files(directory: str) -> list[str]:
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(directory, onerror=_raise):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
    return found


def _raise(exc: OSError) -> None:
    raise SourceError(f"cannot list {exc.filename}: {exc.strerror}; check the path and its permissions")


class ImageFolderSource(BytesSource):
    """Images under class sub-folders.

    Args:
        root: The tree's root directory.
        reencode: None (default) keeps the bytes; ``"jpg"`` or ``"png"`` re-encodes with Pillow.
        quality: JPEG quality for ``reencode="jpg"`` (1..100, default 90).
        path_column: Store each file's path relative to ``root`` (``/``-separated) as
            this manifest metadata column (default None: not stored).
        path_pattern: A regular expression matched against that relative path; each
            named group becomes a metadata column (an int column where every value is
            a whole number), e.g. ``r"(?P<cls>[^/]+)/(?P<source>[a-z]+)_[0-9]+"``.

    Raises:
        SourceError: the root is missing, has no class folders or no images, or a file is unreadable.
    """

    kind = "imagefolder"

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        reencode: str | None = None,
        quality: int = 90,
        path_column: str | None = None,
        path_pattern: str | None = None,
    ) -> None:
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise SourceError(f"ImageFolder root {root!r} is not a directory; pass the folder holding class folders")
        if reencode is not None and reencode not in REENCODINGS:
            raise ConfigError(f"reencode={reencode!r} is not one of {REENCODINGS} (or None to keep the bytes)")
        if not 1 <= quality <= 100:
            raise ConfigError(f"quality={quality} is outside 1..100")
        try:
            entries = sorted(os.listdir(root))
        except OSError as exc:
            raise SourceError(f"cannot list {root!r}: {exc.strerror}") from exc
        classes = [e for e in entries if not e.startswith(".") and os.path.isdir(os.path.join(root, e))]
        strays = [e for e in entries if not e.startswith(".") and e not in classes]
        if strays:
            raise SourceError(
                f"ImageFolder root {root!r} holds a file {strays[0]!r} outside any class folder; "
                "move it into a class folder or remove it"
            )
        if not classes:
            raise SourceError(f"ImageFolder root {root!r} has no class sub-folders")
        paths: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(classes):
            files = _walk_files(os.path.join(root, name))
            paths.extend(files)
            labels.extend([label] * len(files))
        if not paths:
            raise SourceError(f"ImageFolder root {root!r} has class folders but no files in them")
        try:
            self.file_sizes = np.array([os.path.getsize(p) for p in paths], dtype=np.int64)
        except OSError as exc:
            raise SourceError(f"cannot read {exc.filename!r}: {exc.strerror}") from exc
        self.root = root
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = len(classes)
        self.reencode = reencode
        self.quality = quality
        self.description: dict[str, Any] = {
            "kind": self.kind,
            "root": os.path.abspath(root),
            "classes": classes,
        }
        if reencode is not None:
            self.description["reencode"] = {"format": reencode, "quality": quality}
        self.path_column = None if path_column is None else check_name(path_column, "path_column")
        self.path_pattern = _compile(path_pattern)
        self._path_columns = self._match_paths()

    def _match_paths(self) -> dict[str, Any]:
        rels = [os.path.relpath(p, self.root).replace(os.sep, "/") for p in self.paths]
        out: dict[str, Any] = {} if self.path_column is None else {self.path_column: rels}
        if self.path_pattern is None:
            return out
        groups: dict[str, list[str]] = {g: [] for g in self.path_pattern.groupindex}
        for rel in rels:
            match = self.path_pattern.search(rel)
            if match is None:
                raise SourceError(
                    f"path_pattern {self.path_pattern.pattern!r} does not match {rel!r} (below {self.root!r}); "
                    "make the pattern match every file or move the file out"
                )
            for g in groups:
                groups[g].append(match.group(g))
        for g, values in groups.items():
            check_name(g, "path_pattern group")
            whole = all(v is not None and v.isdigit() for v in values)
            out[g] = [int(v) for v in values] if whole else values
        return out

    def metadata_columns(self) -> dict[str, Any]:
        return dict(self._path_columns)

    def tar_sizes(self) -> np.ndarray:
        blocks = -(-self.file_sizes // 512) * 512
        return blocks + 512

    def _read(self, path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise SourceError(f"cannot read {path!r}: {exc.strerror}; check the file and its permissions") from exc

    def tar_samples(self, start: int, stop: int) -> Iterator[dict[str, bytes]]:
        for path in self.paths[start:stop]:
            data = self._read(path)
            ext = image_ext(data[:16])
            if ext is None:
                raise SourceError(
                    f"{path!r} is not an image (no JPEG/PNG/GIF/BMP/WebP/TIFF signature); "
                    "remove it from the ImageFolder tree"
                )
            if self.reencode is not None:
                data, ext = self._reencode(path, data)
            yield {ext: data}

    def _reencode(self, path: str, data: bytes) -> tuple[bytes, str]:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                out = io.BytesIO()
                if self.reencode == "jpg":
                    img.convert("RGB").save(out, format="JPEG", quality=self.quality)
                else:
                    img.save(out, format="PNG")
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise SourceError(f"{path!r} cannot be decoded for re-encoding ({exc})") from exc
        return out.getvalue(), str(self.reencode)

    def tar_fields(self, exts: set[str]) -> dict[str, dict[str, Any]]:
        return {ext: {"encoding": encoding_of(ext)} for ext in sorted(exts)}


