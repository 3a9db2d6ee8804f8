"""Index existing WebDataset tar shards without rewriting them.

Users with terabytes of WebDataset tars adopt shardprune by writing a manifest and a
header beside them: the tars are scanned once (member headers for the byte ranges, the
sample bytes for their CRC32 and the ``cls`` label) and never modified.

Rules a tar must follow (what WebDataset assumes, checked here because a violation
would silently merge or split samples): uncompressed tar; a sample's members adjacent;
no key seen twice (within or across tars); no dot in a key (the key ends at the first
dot of the base name, so a dot can only sit in a directory name or a leading ``./``);
every member has an extension, and at most one member per extension in a sample.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np

from shardprune.errors import SourceError
from shardprune.format.header import HEADER_NAME, MANIFEST_NAME, Header, ShardInfo
from shardprune.format.manifest import NO_LABEL, Manifest, sha256
from shardprune.format.metadata import MetadataFn, columns_from_rows, combine
from shardprune.format.tarsample import BLOCK, member_end, split_key
from shardprune.format.writer import existing_dataset
from shardprune.sources.base import check_labels
from shardprune.sources.sniff import encoding_of
from shardprune.storage import Storage, open_storage

Progress = Callable[[int], None]


#: Leading bytes of the compressed formats a ``.tar`` is often mistaken for.
_COMPRESSED = (
    (b"\x1f\x8b", "gzip", "gunzip"),
    (b"BZh", "bzip2", "bunzip2"),
    (b"\xfd7zXZ\x00", "xz", "unxz"),
    (b"\x28\xb5\x2f\xfd", "zstd", "unzstd"),
    (b"\x04\x22\x4d\x18", "lz4", "unlz4"),
)
_REFETCH = "re-copy or re-download it, or move it out of the folder to index the rest"


def _members(storage: Storage, rel: str) -> list[tarfile.TarInfo]:
    """The regular-file members of one tar, after checking the tar is whole.

    Raises:
        SourceError: the file is missing, compressed, truncated (a member's data or a
            header runs past the end) or damaged; the message names the member and offset.
    """
    path = storage.path(rel)
    try:
        size = storage.size(rel)
        with storage.open(rel) as f:
            head = f.read(BLOCK)
    except FileNotFoundError as exc:
        raise SourceError(f"{path!r} does not exist") from exc
    for magic, kind, tool in _COMPRESSED:
        if head.startswith(magic):
            raise SourceError(
                f"{path!r} is {kind}-compressed; samples are read by byte range, which needs an uncompressed "
                f"tar: decompress it ({tool}) and index the .tar"
            )
    if size == 0:
        raise SourceError(f"{path!r} is empty (0 bytes); {_REFETCH}")
    members: list[tarfile.TarInfo] = []
    try:
        with storage.open(rel) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            while (m := tar.next()) is not None:
                members.append(m)
    except (tarfile.TarError, OSError) as exc:
        if members and member_end(members[-1]) > size:
            raise SourceError(_short_member(path, members[-1], size)) from exc
        where = f"after member {members[-1].name!r} (which ends at byte {member_end(members[-1])})" if members else (
            "at its first header (byte 0)"
        )
        raise SourceError(
            f"{path!r} ({size} bytes) is truncated or damaged {where}: {exc}; {_REFETCH}"
        ) from exc
    end = member_end(members[-1]) if members else 0
    if members and end > size:
        raise SourceError(_short_member(path, members[-1], size))
    with storage.open(rel) as f:
        f.seek(end)
        tail = f.read(BLOCK)
    # tarfile takes a partial last header for the end of the archive; WebDataset would too,
    # silently losing the samples that were cut off.
    if len(tail) < BLOCK and tail.strip(b"\0"):
        raise SourceError(
            f"{path!r} ({size} bytes) is truncated or damaged after byte {end}"
            + (f" (the end of member {members[-1].name!r})" if members else "")
            + f": the {len(tail)} bytes that follow are a partial tar header; {_REFETCH}"
        )
    return [m for m in members if m.isfile()]


def _short_member(path: str, m: tarfile.TarInfo, size: int) -> str:
    return (
        f"{path!r} is truncated: member {m.name!r} (header at byte {m.offset}) declares {m.size} bytes of data, "
        f"but the file ends at byte {size}, {member_end(m) - size} bytes short of the member's end; {_REFETCH}"
    )


def _scan(
    storage: Storage,
    rel: str,
    label_ext: str | None,
    seen: dict[str, str],
    metadata: MetadataFn | None = None,
    first_id: int = 0,
    meta_rows: list[Mapping[str, Any]] | None = None,
) -> tuple[list[tuple[int, int, int, int | None]], set[str]]:
    """Return ``[(offset, length, crc32, label or None)]`` per sample of one tar, and its extensions.

    With ``metadata``, also append ``metadata(sample_id, {extension: bytes})`` of each
    sample to ``meta_rows`` (ids counted from ``first_id``).
    """
    path = storage.path(rel)
    groups: list[list[tarfile.TarInfo]] = []
    current: str | None = None
    exts_in_group: set[str] = set()
    for m in _members(storage, rel):
        key, ext = split_key(m.name)
        base = key.rsplit("/", 1)[-1]
        if not base or "." in key:
            raise SourceError(
                f"{path!r}: member {m.name!r} has key {key!r}, which contains a dot or is empty; "
                "WebDataset keys must not (rename the members or re-convert the data)"
            )
        if not ext:
            raise SourceError(f"{path!r}: member {m.name!r} has no extension; WebDataset fields are KEY.EXT")
        if key == current:
            if ext in exts_in_group:
                raise SourceError(f"{path!r}: sample {key!r} has two members with extension {ext!r}")
            exts_in_group.add(ext)
            groups[-1].append(m)
            continue
        if key in seen:
            raise SourceError(
                f"{path!r}: duplicate key {key!r} (also in {seen[key]!r}); a sample's members must be adjacent "
                "and keys unique"
            )
        seen[key] = path
        current, exts_in_group = key, {ext}
        groups.append([m])
    rows: list[tuple[int, int, int, int | None]] = []
    exts: set[str] = set()
    with storage.open(rel) as f:
        for group in groups:
            start = group[0].offset
            length = member_end(group[-1]) - start
            f.seek(start)
            data = f.read(length)
            if len(data) != length:
                raise SourceError(f"{path!r} is truncated: sample at offset {start} needs {length} bytes")
            label: int | None = None
            fields: dict[str, bytes] = {}
            for m in group:
                ext = split_key(m.name)[1]
                exts.add(ext)
                if metadata is not None:
                    fields[ext] = data[m.offset_data - start : m.offset_data - start + m.size]
                if ext == label_ext:
                    text = data[m.offset_data - start : m.offset_data - start + m.size]
                    try:
                        label = int(text.decode("ascii").strip())
                    except (UnicodeDecodeError, ValueError) as exc:
                        raise SourceError(f"{path!r}: {m.name!r} holds {text[:20]!r}, not an integer label") from exc
            if metadata is not None and meta_rows is not None:
                row = metadata(first_id + len(rows), fields)
                if not isinstance(row, Mapping):
                    raise SourceError(
                        f"metadata function returned {type(row).__name__} for {path!r} sample {group[0].name!r}; "
                        "it must return a dict {column: bool | int | float | str | None}"
                    )
                meta_rows.append(row)
            rows.append((start, length, zlib.crc32(data) & 0xFFFFFFFF, label))
    return rows, exts


def find_tars(root: str | os.PathLike[str] | Storage) -> list[str]:
    """Paths (relative to ``root``, ``/``-separated, sorted) of the ``.tar`` files below ``root``."""
    return open_storage(root).find(".tar")


def index_tars(
    root: str | os.PathLike[str],
    *,
    tars: list[str] | None = None,
    label_ext: str | None = "cls",
    num_classes: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    metadata: MetadataFn | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Header:
    """Write ``manifest.arrow`` and ``shardprune.json`` beside existing WebDataset tars.

    Args:
        root: Directory or object-store prefix (``s3://bucket/prefix``, chained fsspec
            URLs too) holding the tars; it becomes the dataset root.
        tars: Tar paths relative to ``root`` in shard order (default: every ``*.tar``
            below ``root``, sorted).
        label_ext: Member extension holding an ASCII integer label (default ``"cls"``;
            None: unlabelled). Either every sample has it or none does.
        num_classes: Labels must lie in ``0..num_classes-1`` (default: max label + 1).
        overwrite: Replace an existing, different header and manifest (default False).
        progress: Called with the number of samples indexed since the last call.
        metadata: ``fn(sample_id, {extension: bytes}) -> {column: value}`` for manifest
            metadata columns, e.g. :class:`~shardprune.format.metadata.JsonColumns` to copy
            keys of each sample's ``.json`` member (default None). The samples are read
            anyway, for their CRC32.
        storage_options: fsspec options for a remote ``root`` (endpoint, credentials).

    Raises:
        SourceError: a rule in the module docstring is broken, or there are no samples.
        OutputExistsError: a different dataset is already indexed here.
    """
    storage = Storage(root, storage_options)
    root = storage.url
    if storage.is_local and not os.path.isdir(root):
        raise SourceError(f"{root!r} is not a directory; pass the folder holding the .tar shards")
    rels = find_tars(storage) if tars is None else list(tars)
    if not rels:
        raise SourceError(f"no .tar files below {root!r}")
    seen: dict[str, str] = {}
    shards: list[ShardInfo] = []
    cols: list[tuple[int, int, int, int, int | None]] = []
    exts: set[str] = set()
    meta_rows: list[Mapping[str, Any]] = []
    for rel in rels:
        rows, shard_exts = _scan(storage, rel, label_ext, seen, metadata, len(cols), meta_rows)
        if not rows:
            continue
        exts |= shard_exts
        shard = len(shards)
        shards.append(ShardInfo(path=rel, bytes=storage.size(rel), samples=len(rows)))
        cols.extend((shard, o, n, c, lab) for o, n, c, lab in rows)
        if progress is not None:
            progress(len(rows))
    if not cols:
        raise SourceError(f"the tars below {root!r} hold no samples")
    raw_labels = [c[4] for c in cols]
    has = [lab is not None for lab in raw_labels]
    labels: np.ndarray
    if all(has):
        labels, classes = check_labels(np.asarray(raw_labels, dtype=np.int64), num_classes, root)
        num: int | None = classes
    elif any(has):
        missing = has.index(False)
        raise SourceError(
            f"sample {missing} has no .{label_ext} member while others do; label every sample or pass --label-ext ''"
        )
    else:
        labels, num = np.full(len(cols), NO_LABEL, dtype=np.int64), None
    manifest = Manifest.from_columns(
        shard=np.array([c[0] for c in cols], dtype=np.int32),
        offset=np.array([c[1] for c in cols], dtype=np.int64),
        length=np.array([c[2] for c in cols], dtype=np.int64),
        label=labels,
        crc32=np.array([c[3] for c in cols], dtype=np.uint32),
        metadata=combine(len(cols), columns_from_rows(meta_rows, len(cols))) if metadata is not None else None,
    )
    manifest_bytes = manifest.to_bytes()
    fields: dict[str, dict[str, Any]] = {ext: {"encoding": encoding_of(ext)} for ext in sorted(exts)}
    header = Header(
        num_samples=len(cols),
        shard_format="tar",
        fields=fields,
        shards=tuple(shards),
        manifest_sha256=sha256(manifest_bytes),
        num_classes=num,
        source={"kind": "webdataset-index", "label_ext": label_ext},
    )
    existing = existing_dataset(storage, header, overwrite)
    if existing is not None:
        return existing
    storage.remove(HEADER_NAME)
    storage.write_bytes_atomic(MANIFEST_NAME, manifest_bytes)
    storage.write_bytes_atomic(HEADER_NAME, header.to_json().encode("utf-8"))
    return header
