"""Shard tar files to samples, at a fraction of the cost of Python's ``tarfile``.

``tarfile`` spends ~0.2 ms of Python per member (more with the pax header webdataset's writer
adds to every member for its float mtime): ~2.5 ms per 12-member object, as much as decoding its
PNGs (scripts/bench_data.py). The loader needs little of it: regular files' names and bytes, in
order. This reader parses the ustar header itself (checksum-checked, so a file of random bytes
is an error, not garbage samples), honours pax ``path``/``size`` records and GNU long names, and
skips everything else. Local shards are memory-mapped: a member is a read-only ``memoryview``
of the file's pages, so the views a sample does not use are never read or copied; other shards are
opened by webdataset's ``gopen`` (``pipe:``, http) and give ``bytes``. Members are grouped into
samples exactly as ``webdataset.tarfile_to_samples`` groups them (the key is the name up to the
first dot of its base name), with ``__key__`` and ``__url__``. A tar that breaks off (mid-member,
or at a block boundary without tar's end-of-archive block) raises ``tarfile.ReadError`` whose
``key`` names the first sample lost; the whole samples before it still come out.
"""

from __future__ import annotations

import mmap
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator

from webdataset.gopen import gopen

BLOCK = 512
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta


def _number(field: bytes) -> int:
    if field[0] & 0x80:  # base-256 (GNU) for values past the octal field
        return int.from_bytes(field[1:], "big")
    text = field.strip(b"\0 ")
    return int(text, 8) if text else 0


def _pax(data: bytes) -> dict[str, str]:
    records, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        records[key.decode()] = value.decode("utf-8", "replace")
        pos += length
    return records


class _Mapped:
    """``read`` over a memory-mapped local file, as zero-copy memoryview slices. The mapping
    lives as long as a slice of it does (samples in the shuffle buffer hold their members)."""

    def __init__(self, path: str) -> None:
        with open(path, "rb") as file:
            empty = os.fstat(file.fileno()).st_size == 0
            mapped = b"" if empty else mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        self.view, self.pos = memoryview(mapped), 0

    def read(self, size: int) -> memoryview:
        out = self.view[self.pos : self.pos + size]
        self.pos += size
        return out

    def close(self) -> None:
        self.view = memoryview(b"")  # unmapped once the last member slice is gone


def _open(url: str):
    if url.startswith("file:"):
        url = url[len("file:") :]
    if "://" in url or url.startswith("pipe:"):
        return gopen(url, "rb")
    return _Mapped(url)


_ZERO = bytes(BLOCK)


def _read_error(message: str, member: str | None) -> tarfile.ReadError:
    """A tar that breaks off or is no tar; ``.member``: the file being read, when one was (a
    reader names the sample lost with the rest of the shard by it)."""
    error = tarfile.ReadError(f"{message} (in member {member})" if member else message)
    error.member = member
    return error


def tar_members(stream) -> Iterator[tuple[str, memoryview]]:
    """(name, data) of each regular file of the tar stream ``stream``, in order; ``data`` is a
    read-only memoryview (of the mapped file, or of the bytes read from a stream). A stream that
    ends without tar's end-of-archive block was cut short (a copy broken off at a block boundary
    would otherwise lose its last objects without a word): a ReadError naming the last member."""
    pending: dict[str, str] = {}
    read = stream.read
    last = None  # the last member read: where a cut shard broke off
    while True:
        header = bytes(read(BLOCK))
        if len(header) < BLOCK or header == _ZERO:
            if header != _ZERO and last is not None:
                raise _read_error("truncated: no end-of-archive block after it", last)
            if header and len(header) < BLOCK:
                raise _read_error("truncated tar header", last)
            return  # end-of-archive (zero block), or an empty stream
        try:
            stored, size = _number(header[148:156]), _number(header[124:136])
        except ValueError:
            stored = size = -1
        if stored != sum(header) - sum(header[148:156]) + 256:  # chksum field as spaces
            raise _read_error("invalid tar header (bad checksum): not a tar file?", last)
        kind = header[156:157]
        if "size" in pending and kind not in (b"x", b"L", b"g"):  # pax size of a huge member
            size = int(pending["size"])
        regular = kind in (b"0", b"\0", b"7")
        name = pending.get("path") if regular else None
        if regular and name is None:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            prefix = header[345:500].split(b"\0", 1)[0]
            if header[257:262] == b"ustar" and prefix:
                name = prefix.decode("utf-8", "replace") + "/" + name
        padded = size + (-size % BLOCK)
        data = memoryview(read(padded))  # the member and its padding in one read
        if len(data) != padded:
            got = f"unexpected end of data ({len(data)} of {padded} bytes)"
            raise _read_error(got, name or last)
        data = data[:size]
        if kind == b"x":  # pax extended header for the next member (mostly just an mtime)
            record = bytes(data)
            pending = _pax(record) if b" path=" in record or b" size=" in record else {}
            continue
        if kind == b"L":  # GNU long name for the next member
            pending = {"path": bytes(data).rstrip(b"\0").decode("utf-8", "replace")}
            continue
        pending = {}
        if not regular:  # directories, links, global headers...: skip
            continue
        last = name
        yield name, data


def group_samples(members: Iterable[tuple[str, memoryview]], url: str) -> Iterator[dict]:
    """Consecutive members with one key -> one sample ``{"__key__", "__url__", ext: data}``.
    When the tar breaks off, the sample before the broken member's is complete and still comes
    out; the error's ``key`` names the first sample lost (it and the rest of the shard)."""
    sample: dict | None = None
    try:
        for name, data in members:
            match = _KEY.match(name)
            if match is None or _META.search(name):
                continue
            key, ext = match.group(1), match.group(2).lower()
            if sample is None or key != sample["__key__"]:
                if sample is not None:
                    yield sample
                sample = {"__key__": key, "__url__": url}
            if ext in sample:
                raise ValueError(f"{name}: duplicate file name in tar file {url}")
            sample[ext] = data
    except tarfile.ReadError as error:
        member = getattr(error, "member", None)
        match = _KEY.match(member) if member else None
        broken = match.group(1) if match else None
        if sample is not None and broken is not None and broken != sample["__key__"]:
            yield sample  # complete: the shard broke off in the next sample's members
            sample = None
        error.key = sample["__key__"] if sample is not None else broken
        raise
    if sample is not None:
        yield sample


def tar_samples(
    sources: Iterable[dict], handler: Callable[[Exception], bool] | None = None
) -> Iterator[dict]:
    """webdataset stage: ``{"url": ...}`` sources -> samples. An error ends that shard; the URL is
    appended to its args (as webdataset does) and ``handler`` decides: True goes on with the next
    shard, otherwise (or without a handler) the error propagates."""
    for source in sources:
        url = source["url"]
        try:
            stream = _open(url)
            try:
                yield from group_samples(tar_members(stream), url)
            finally:
                stream.close()
        except Exception as error:  # IO, tar and grouping errors: the handler decides
            error.args = (*error.args, url)
            if handler is None or not handler(error):
                raise
