"""The dataset header: a small JSON file that says what a dataset directory holds.

Layout of a dataset directory (local or under an object-store prefix)::

    shardprune.json      this header
    manifest.arrow       one row per sample (see :mod:`shardprune.format.manifest`)
    shards/...           tar shards (WebDataset-compatible) or zarr shards

The header is written last, atomically: a directory without it is not a dataset,
so an interrupted conversion never looks complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from shardprune.errors import DatasetError, FormatVersionError

HEADER_NAME = "shardprune.json"
MANIFEST_NAME = "manifest.arrow"
FORMAT_NAME = "shardprune"
FORMAT_VERSION = 1
SHARD_FORMATS = ("tar", "zarr")


@dataclass(frozen=True)
class ShardInfo:
    """One shard file.

    Attributes:
        path: Path of the file holding the sample bytes, relative to the dataset root.
            For zarr shards this is the zarr shard object of the data array
            (e.g. ``shards/000000.zarr/x/c/0``); the zarr group is its ancestor.
        bytes: Size of that file in bytes.
        samples: Number of samples in it.
    """

    path: str
    bytes: int
    samples: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "bytes": self.bytes, "samples": self.samples}


@dataclass(frozen=True)
class Header:
    """The parsed ``shardprune.json``.

    Attributes:
        num_samples: N; sample ids are dense ``0..N-1``.
        shard_format: ``"tar"`` or ``"zarr"``.
        fields: Field name -> description. Tar: ``{"jpg": {"encoding": "jpeg"}, "cls":
            {"encoding": "int"}}`` (the name is the tar member extension). Zarr:
            ``{"x": {"encoding": "array", "dtype": "float32", "shape": [40],
            "compression": "none" | "zstd"}}``.
        shards: The shard files, in shard-index order (the manifest's ``shard`` column).
        manifest_sha256: Checksum of the manifest file; also the dataset fingerprint.
        num_classes: Number of label classes, or None for unlabelled data.
        source: Free-form description of what the dataset was converted from.
    """

    num_samples: int
    shard_format: str
    fields: dict[str, dict[str, Any]]
    shards: tuple[ShardInfo, ...]
    manifest_sha256: str
    num_classes: int | None = None
    source: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def fingerprint(self) -> str:
        """Identity of the dataset's content: the manifest checksum."""
        return self.manifest_sha256

    def to_json(self) -> str:
        doc = {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "num_samples": self.num_samples,
            "shard_format": self.shard_format,
            "num_classes": self.num_classes,
            "fields": self.fields,
            "manifest": {"path": MANIFEST_NAME, "sha256": self.manifest_sha256},
            "shards": [s.to_json() for s in self.shards],
            "source": self.source,
        }
        return json.dumps(doc, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "header") -> "Header":
        """Parse and validate a header.

        Raises:
            DatasetError: the JSON is malformed or a field is missing.
            FormatVersionError: the dataset uses a format version this release cannot read.
        """
        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{where} is not valid JSON ({exc}); re-run tools/make_shards.py") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise DatasetError(f"{where} is not a shardprune header (missing \"format\": \"{FORMAT_NAME}\")")
        version = doc.get("format_version")
        if version != FORMAT_VERSION:
            raise FormatVersionError(
                f"{where} has format_version={version!r}; this shardprune reads version {FORMAT_VERSION}; "
                "upgrade shardprune or re-convert the dataset with this version's tools/make_shards.py"
            )
        try:
            shard_format = str(doc["shard_format"])
            if shard_format not in SHARD_FORMATS:
                raise DatasetError(f"{where}: shard_format={shard_format!r}, expected one of {SHARD_FORMATS}")
            shards = tuple(
                ShardInfo(path=str(s["path"]), bytes=int(s["bytes"]), samples=int(s["samples"]))
                for s in doc["shards"]
            )
            header = cls(
                num_samples=int(doc["num_samples"]),
                shard_format=shard_format,
                fields=dict(doc["fields"]),
                shards=shards,
                manifest_sha256=str(doc["manifest"]["sha256"]),
                num_classes=None if doc.get("num_classes") is None else int(doc["num_classes"]),
                source=dict(doc.get("source") or {}),
                format_version=int(version),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, DatasetError):
                raise
            raise DatasetError(f"{where} is missing or has a malformed field: {exc!r}") from exc
        if shard_format == "zarr" and len(header.fields) != 1:
            raise DatasetError(
                f"{where}: a zarr dataset has exactly one array field, this one has {sorted(header.fields)}; "
                "re-convert it with one field per dataset"
            )
        if sum(s.samples for s in shards) != header.num_samples:
            raise DatasetError(
                f"{where}: shards hold {sum(s.samples for s in shards)} samples but num_samples="
                f"{header.num_samples}; the dataset is inconsistent, re-convert it"
            )
        return header
