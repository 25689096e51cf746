"""Objaverse-XL as a source (``--source objaverse-xl``), in the ``objaverse`` package's layouts.

Annotations: the package's ``objaverse.xl`` reads one parquet file per source,
``ROOT/{github,thingiverse,sketchfab,smithsonian}/<source>.parquet`` (columns ``fileIdentifier,
source, license, fileType, sha256, metadata``; fetched from ``xl_base_url/<source>/<source>.parquet``
when missing). Files land where the package's own downloaders put them, so a cache filled by
either is used by the other:

| source | file | fetched from |
| --- | --- | --- |
| sketchfab | ``ROOT/hf-objaverse-v1/glbs/NNN-NNN/UID.glb`` | the Objaverse 1.0 hub (``base_url``) |
| smithsonian | ``ROOT/smithsonian/objects/UUID5(fileIdentifier).glb`` | the fileIdentifier URL |
| thingiverse | ``ROOT/thingiverse/thing-T-file-F.stl`` | ``thingiverse_url/download:F`` |
| github | ``ROOT/github/repos/ORG/REPO/PATH`` (the package's ``files`` format) | ``github_raw_url/ORG/REPO/COMMIT/PATH`` |

The package clones whole GitHub repositories with git and has no timeout; here each object's own
file is fetched with :func:`data_prep.objaverse_source.download` (timeout, retries, deadline) plus
the files it names that matter for rendering: an OBJ's MTL libraries and their texture maps, a
``.gltf``'s buffers and images (relative names, into the same repository folder, where the
renderer's texture lookup finds them). Every fetched object file is checked against its sha256;
a changed file renders with an ``sha256_changed`` note in meta.json. Objects whose sha256 repeats
(the same file in several repositories or sources) are listed once (``deduplicate``), keeping
the first by source order, then fileIdentifier. The object id is the sha256.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from pathlib import Path

import objaverse

from data_prep.config import ObjaverseOptions
from data_prep.objaverse_source import ObjaverseSource, download, valid_file
from data_prep.sources import ObjectRef, Source

XL_SOURCES = ("sketchfab", "smithsonian", "github", "thingiverse")
COLUMNS = ["fileIdentifier", "source", "license", "fileType", "sha256"]


def smithsonian_uid(file_identifier: str) -> str:
    """The package's file name for a Smithsonian object (``objaverse.utils.get_uid_from_str``)."""
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_DNS, file_identifier))


def github_parts(file_identifier: str) -> tuple[str, str, str, str]:
    """``https://github.com/ORG/REPO/blob/COMMIT/PATH`` -> (org, repo, commit, path)."""
    match = re.match(r"https?://github\.com/([^/]+)/([^/]+)/blob/([^/]+)/(.+)$", file_identifier)
    if not match:
        raise ValueError(f"not a GitHub blob URL: {file_identifier}")
    return match.group(1), match.group(2), match.group(3), urllib.parse.unquote(match.group(4))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def referenced_files(path: Path) -> list[str]:
    """Relative names of the files an OBJ (MTL libraries) / MTL (maps) / .gltf (buffers,
    images) needs beside it; URLs, data URIs and absolute paths are left out."""
    names: list[str] = []
    suffix = path.suffix.lower()
    try:
        if suffix == ".gltf":
            data = json.loads(path.read_text(errors="replace"))
            for item in data.get("buffers", []) + data.get("images", []):
                names.append(urllib.parse.unquote(item.get("uri", "")))
        elif suffix in (".obj", ".mtl"):
            keys = ("mtllib",) if suffix == ".obj" else ("map_kd", "map_ka", "map_ks", "map_d")
            keys += () if suffix == ".obj" else ("map_bump", "bump", "norm", "map_pr", "map_ke")
            for line in path.read_text(errors="replace").splitlines():
                parts = line.strip().split(None, 1)
                if len(parts) == 2 and parts[0].lower() in keys:
                    names.append(parts[1].split()[-1] if parts[0].lower() != "mtllib" else parts[1])
    except (OSError, ValueError):
        return []
    return [
        n.replace("\\", "/")
        for n in names
        if n and not n.startswith(("data:", "http:", "https:", "/")) and ":" not in n[:3]
    ]


class ObjaverseXLSource(Source):
    name = "objaverse-xl"

    def __init__(self, options: ObjaverseOptions):
        self.options = options
        self.root = Path(options.cache_dir).expanduser() if options.cache_dir else None
        self.root = self.root or Path(objaverse.BASE_PATH)
        self.v1 = ObjaverseSource(options)  # sketchfab objects live in the 1.0 hub and cache
        self._paths: dict[str, Path] = {}  # object id -> its fetched file (for release)
        unknown = sorted(set(options.xl_sources) - set(XL_SOURCES))
        if unknown:
            raise ValueError(f"unknown Objaverse-XL sources {unknown}; known: {list(XL_SOURCES)}")

    @property
    def fetch_workers(self) -> int:
        return max(1, self.options.download_workers)

    # --- listing --------------------------------------------------------------------------
    def _annotations(self, source: str):
        import pyarrow.parquet as pq

        local = self.root / source / f"{source}.parquet"
        if not local.exists():
            url = f"{self.options.xl_base_url}/{source}/{source}.parquet"
            download(url, local, self.options, check=lambda p, _: p.stat().st_size > 0)
        present = set(pq.read_schema(local).names)
        return pq.read_table(local, columns=[c for c in COLUMNS if c in present])

    def list(self) -> list[ObjectRef]:
        sources = list(self.options.xl_sources) or list(XL_SOURCES)
        types = {t.lower().lstrip(".") for t in self.options.file_types}
        keep, drop = set(self.options.licenses), set(self.options.exclude_licenses)
        rows: list[tuple[int, str, dict]] = []
        for order, source in enumerate(sources):
            table = self._annotations(source).to_pylist()
            for row in table:
                row.setdefault("source", source)
                kind = str(row.get("fileType") or "").lower()
                license_ = str(row.get("license") or "unknown")
                if types and kind not in types:
                    continue
                if (keep and license_ not in keep) or license_ in drop:
                    continue
                rows.append((order, row["fileIdentifier"], row))
        rows.sort(key=lambda item: (item[0], item[1]))
        refs, seen = [], set()
        for _, identifier, row in rows:
            sha = str(row.get("sha256") or hashlib.sha256(identifier.encode()).hexdigest())
            if self.options.deduplicate and sha in seen:
                continue
            seen.add(sha)
            refs.append(
                ObjectRef(
                    id=sha,
                    source=f"objaverse-xl:{row['source']}",
                    license=str(row.get("license") or "unknown"),
                    extra={
                        "file_identifier": identifier,
                        "file_type": row.get("fileType"),
                        "sha256": row.get("sha256"),
                    },
                )
            )
        return refs

    # --- fetching -------------------------------------------------------------------------
    def local_path(self, ref: ObjectRef) -> tuple[Path, Path]:
        """(object file, asset root) in the package's cache layout."""
        identifier, source = ref.extra["file_identifier"], ref.source.split(":", 1)[1]
        if source == "sketchfab":
            uid = identifier.rstrip("/").split("/")[-1]
            path = self.v1.cache / self.v1.object_paths()[uid]
            return path, path.parent
        if source == "smithsonian":
            path = self.root / "smithsonian" / "objects" / f"{smithsonian_uid(identifier)}.glb"
            return path, path.parent
        if source == "thingiverse":
            file_id = identifier.split("fileId=")[-1]
            thing_id = identifier.split("/")[-2].split(":")[1]
            path = self.root / "thingiverse" / f"thing-{thing_id}-file-{file_id}.stl"
            return path, path.parent
        org, repo, _, inner = github_parts(identifier)
        repo_root = self.root / "github" / "repos" / org / repo
        return repo_root / inner, repo_root

    def _url(self, ref: ObjectRef) -> str:
        identifier, source = ref.extra["file_identifier"], ref.source.split(":", 1)[1]
        if source == "smithsonian":
            return identifier
        if source == "thingiverse":
            return f"{self.options.thingiverse_url}/download:{identifier.split('fileId=')[-1]}"
        org, repo, commit, inner = github_parts(identifier)
        return f"{self.options.github_raw_url}/{org}/{repo}/{commit}/{urllib.parse.quote(inner)}"

    def fetch_one(self, ref: ObjectRef) -> Path | Exception:
        try:
            if ref.source == "objaverse-xl:sketchfab":
                uid = ref.extra["file_identifier"].rstrip("/").split("/")[-1]
                path = self.v1._fetch(self.v1.object_paths()[uid])
            else:
                path, root = self.local_path(ref)
                if not (path.exists() and valid_file(path)):
                    download(self._url(ref), path, self.options)
                ref.asset_root = root
                if ref.source == "objaverse-xl:github":
                    self._fetch_companions(ref, path)
        except (ConnectionError, OSError, KeyError, ValueError) as error:
            return error if isinstance(error, ConnectionError | OSError) else OSError(str(error))
        self._paths[ref.id] = path
        expected = ref.extra.get("sha256")
        if expected and sha256_of(path) != expected:
            ref.extra["sha256_changed"] = True  # the repository changed since the annotations
        return path

    def _fetch_companions(self, ref: ObjectRef, path: Path) -> None:
        """An OBJ's MTL files and their maps, a .gltf's buffers and images, from the same
        commit; a missing companion is left to the renderer's texture record."""
        identifier = ref.extra["file_identifier"]
        base = identifier.rsplit("/", 1)[0]
        pending, done = [(path, base)], set()
        while pending:
            current, current_base = pending.pop()
            for name in referenced_files(current):
                target = (current.parent / name).resolve()
                repo_root = ref.asset_root.resolve()
                if target in done or not target.is_relative_to(repo_root):
                    continue  # never write outside the repository's folder
                done.add(target)
                child = ObjectRef(id="", source=ref.source, extra={})
                child.extra["file_identifier"] = f"{current_base}/{name}"
                if not target.exists():
                    try:
                        download(self._url(child), target, self.options)
                    except ConnectionError:
                        continue
                if target.suffix.lower() == ".mtl":
                    pending.append((target, child.extra["file_identifier"].rsplit("/", 1)[0]))

    def release(self, object_ids: list[str]) -> None:
        """With ``delete_after_shard``: delete each object's file once it is in a shard or has
        failed (companion textures stay: other objects of the repository may use them)."""
        for object_id in object_ids:
            path = self._paths.pop(object_id, None)
            if path is not None and self.options.delete_after_shard:
                path.unlink(missing_ok=True)


def write_fake_xl(folder: str | Path, objects: list[dict], base_url: str) -> None:
    """Lay out ``folder`` like Objaverse-XL's hosts for offline tests: one parquet per source
    (``<source>/<source>.parquet``) and each object's bytes at the URL path the source would use.
    ``objects``: dicts with ``source, fileIdentifier (path part only for github/smithsonian),
    license, fileType, data`` (bytes) and optional ``files`` (companions: name -> bytes) and
    ``sha256`` (default: that of data)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    tables: dict[str, list[dict]] = {}
    for item in objects:
        source, data = item["source"], item["data"]
        if source == "github":
            org, repo, commit, inner = item["github"]
            identifier = f"https://github.com/{org}/{repo}/blob/{commit}/{inner}"
            target = folder / "raw" / org / repo / commit / inner
            for name, blob in item.get("files", {}).items():
                companion = target.parent / name
                companion.parent.mkdir(parents=True, exist_ok=True)
                companion.write_bytes(blob)
        elif source == "smithsonian":
            identifier = f"{base_url}/smithsonian-files/{item['name']}.glb"
            target = folder / "smithsonian-files" / f"{item['name']}.glb"
        elif source == "thingiverse":
            thing, file_id = item["thing"]
            identifier = f"https://www.thingiverse.com/thing:{thing}/filePath?fileId={file_id}"
            target = folder / "thingiverse-site" / f"download:{file_id}"
        else:  # sketchfab: the object must also be in the 1.0 fake hub (write_fake_hub)
            identifier = f"https://sketchfab.com/3d-models/{item['uid']}"
            target = None
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        tables.setdefault(source, []).append(
            {
                "fileIdentifier": identifier,
                "source": source,
                "license": item.get("license", "by"),
                "fileType": item["fileType"],
                "sha256": item.get("sha256") or hashlib.sha256(data).hexdigest(),
                "metadata": "{}",
            }
        )
    for source, rows in tables.items():
        (folder / source).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), folder / source / f"{source}.parquet")
