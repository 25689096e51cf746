"""Objaverse 1.0 through the ``objaverse`` package, made safe for long unattended runs.

The package (0.1.7) defines the cache layout (``~/.objaverse/hf-objaverse-v1/...``: object
paths, metadata, LVIS annotations, glbs). Its downloader has no timeout or retry, one failure
ends its whole pool, it re-globs the whole cache after each file and it re-parses
``object-paths.json.gz`` on every call, so files are fetched and parsed here instead, into the
package's own cache paths: each download goes to a temporary name unique per host, process and
thread, is validated (GLB header and length, gzip CRC) and only then renamed; a cached file that
fails validation is fetched again; every object has an overall deadline over its retries. The
object paths, LVIS and metadata files are parsed once per run. Offline,
:class:`ObjaverseOfflineError` is raised at once.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import objaverse

from data_prep.config import ObjaverseOptions
from data_prep.sources import ObjectRef, Source

OFFLINE_HINT = (
    "Objaverse is unreachable ({why}). Offline alternatives: `--source samples` (the built-in "
    "sample set), `--source /path/to/meshes` (a folder of GLB/glTF/OBJ/FBX/PLY/STL files), or "
    "fill the cache {cache} on a machine with network (`objaverse` keeps object-paths.json.gz, "
    "metadata/, lvis-annotations.json.gz and glbs/ there) and copy it over."
)


class ObjaverseOfflineError(ConnectionError):
    """No route to the Objaverse hub while files the run needs are not cached."""


def valid_glb(path: Path) -> bool:
    """A complete GLB: the magic, version 2 and a header length equal to the file size."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
        size = path.stat().st_size
    except OSError:
        return False
    if len(head) < 12 or head[:4] != b"glTF":
        return False
    version, length = struct.unpack("<II", head[4:12])
    return version == 2 and length == size


def valid_file(path: Path, suffix: str | None = None) -> bool:
    """Cheap completeness check by kind (GLB header; gzip read through to its CRC); ``suffix``
    names the kind of a temporary file."""
    suffix = suffix or path.suffix
    if suffix == ".glb":
        return valid_glb(path)
    if suffix == ".gz":
        try:
            with gzip.open(path, "rb") as handle:
                while handle.read(1 << 20):
                    pass
            return True
        except (OSError, EOFError, zlib.error):
            return False
    return path.is_file() and path.stat().st_size > 0


def _tmp_name(local: Path) -> Path:
    """A temporary name unique per host, process and thread: machines sharing one cache folder
    never write into each other's partial files."""
    tag = f"{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}"
    return local.with_name(f"{local.name}.{tag}.tmp")


def _remove_stale_tmps(local: Path) -> None:
    """Delete partial downloads of ``local`` left by dead processes on this host (kill -9)."""
    host = socket.gethostname()
    for stale in local.parent.glob(f"{glob.escape(local.name)}.*.tmp"):
        parts = stale.name[len(local.name) + 1 : -len(".tmp")].rsplit(".", 2)
        if len(parts) != 3 or parts[0] != host:
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            stale.unlink(missing_ok=True)
        except (ValueError, PermissionError):
            pass


def download(url: str, local: Path, options: ObjaverseOptions, check=None) -> Path:
    """``url`` into ``local`` with a socket timeout per attempt, retries with backoff and one
    overall deadline, through a temporary name unique per host, process and thread; the file is
    validated (``check``, default :func:`valid_file`) before it takes its final name. A cached
    ``local`` that fails validation (a copy cut short by another tool) is replaced."""
    check = check or valid_file
    local.unlink(missing_ok=True)
    local.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmps(local)
    tmp = _tmp_name(local)
    deadline = time.monotonic() + options.download_deadline_s
    error: Exception | None = None
    try:
        for attempt in range(options.download_retries + 1):
            if attempt:
                time.sleep(min(0.5 * 2**attempt, 10.0, max(0.0, deadline - time.monotonic())))
            left = deadline - time.monotonic()
            if left <= 0:
                error = TimeoutError(f"download deadline of {options.download_deadline_s:g} s")
                break
            try:
                timeout = min(options.download_timeout_s, left)
                with urllib.request.urlopen(url, timeout=timeout) as reply:
                    with open(tmp, "wb") as handle:
                        while chunk := reply.read1(1 << 20):  # what has arrived
                            handle.write(chunk)
                            if time.monotonic() > deadline:  # a server that only drips
                                raise TimeoutError("download deadline passed mid-file")
                if not check(tmp, local.suffix):
                    raise OSError(f"downloaded file is incomplete or corrupt ({local.name})")
                os.replace(tmp, local)
                return local
            except urllib.error.HTTPError as http_error:
                error = http_error
                if http_error.code in (401, 403, 404):
                    break  # retrying will not help
            except (urllib.error.URLError, OSError, TimeoutError) as io_error:
                error = io_error
    finally:
        tmp.unlink(missing_ok=True)
    raise ConnectionError(f"{url}: {error}")


class ObjaverseSource(Source):
    name = "objaverse"

    def __init__(self, options: ObjaverseOptions):
        self.options = options
        root = (
            Path(options.cache_dir).expanduser() if options.cache_dir else Path(objaverse.BASE_PATH)
        )
        self.cache = root / "hf-objaverse-v1"
        self._online_checked = False
        self._object_paths: dict[str, str] | None = None  # parsed once per run
        self._metadata: dict[str, dict] = {}  # metadata folder -> its parsed annotations
        self._lock = threading.Lock()

    # --- fetching -------------------------------------------------------------------------
    def _check_online(self) -> None:
        if self._online_checked:
            return
        url = f"{self.options.base_url}/object-paths.json.gz"
        try:
            request = urllib.request.Request(url, method="HEAD")
            urllib.request.urlopen(request, timeout=self.options.connect_timeout_s).close()
        except urllib.error.HTTPError:
            pass  # the server answered: we are online (the file fetch reports its own error)
        except (urllib.error.URLError, OSError) as error:
            why = getattr(error, "reason", error)
            raise ObjaverseOfflineError(OFFLINE_HINT.format(why=why, cache=self.cache)) from None
        self._online_checked = True

    def _fetch(self, relative: str) -> Path:
        """The cached file at ``relative`` (hub layout), downloaded when missing or invalid."""
        local = self.cache / relative
        if local.exists() and valid_file(local):
            return local
        self._check_online()
        return download(f"{self.options.base_url}/{relative}", local, self.options)

    def _json_gz(self, relative: str):
        """Parse a cached ``.json.gz`` (fetched when missing; re-fetched once if unreadable)."""
        for attempt in range(2):
            path = self._fetch(relative)
            try:
                with gzip.open(path, "rt") as handle:
                    return json.load(handle)
            except (OSError, EOFError, ValueError, zlib.error):
                if attempt:
                    raise
                path.unlink(missing_ok=True)

    # --- listing --------------------------------------------------------------------------
    def object_paths(self) -> dict[str, str]:
        """uid -> hub path of its GLB (``object-paths.json.gz``, parsed once per run)."""
        with self._lock:
            if self._object_paths is None:
                self._object_paths = self._json_gz("object-paths.json.gz")
            return self._object_paths

    def _uids(self) -> list[str]:
        return list(self.object_paths())

    def _lvis(self) -> dict[str, list[str]]:
        return self._json_gz("lvis-annotations.json.gz")

    def annotations(self, uids: list[str]) -> dict[str, dict]:
        """Annotations of ``uids`` (each metadata file fetched and parsed once per run)."""
        paths = self.object_paths()
        folders = sorted({paths[uid].split("/")[1] for uid in uids if uid in paths})
        missing = [f for f in folders if f not in self._metadata]
        if missing:
            workers = max(1, min(self.options.download_workers, len(missing)))
            with ThreadPoolExecutor(workers) as pool:
                parsed = pool.map(lambda f: _slim(self._json_gz(f"metadata/{f}.json.gz")), missing)
                self._metadata.update(zip(missing, parsed))
        found = {}
        for uid in uids:
            if uid in paths:
                info = self._metadata[paths[uid].split("/")[1]].get(uid)
                if info is not None:
                    found[uid] = info
        return found

    def _explicit_uids(self) -> list[str]:
        uids = list(self.options.uids)
        if self.options.uid_file:
            text = Path(self.options.uid_file).read_text()
            uids += [line.split(",")[0].strip() for line in text.splitlines() if line.strip()]
        return [uid[:-4] if uid.endswith(".glb") else uid for uid in uids]

    def list(self) -> list[ObjectRef]:
        known = self._uids()
        known_set = set(known)
        uids = known
        explicit = self._explicit_uids()
        if explicit:
            unknown = [uid for uid in explicit if uid not in known_set]
            if unknown:
                raise KeyError(f"unknown Objaverse uids: {', '.join(unknown[:5])}")
            uids = list(dict.fromkeys(explicit))
        category_of: dict[str, str] = {}
        if self.options.lvis_categories:
            lvis = self._lvis()
            for category in self.options.lvis_categories:
                if category not in lvis:
                    close = [c for c in lvis if category.lower() in c.lower()][:5]
                    raise KeyError(f"unknown LVIS category {category!r} (similar: {close})")
                category_of.update({uid: category for uid in lvis[category]})
            uids = [uid for uid in uids if uid in category_of]
        licenses: dict[str, str] = {}
        if self.options.licenses or self.options.exclude_licenses:
            annotations = self.annotations(uids)
            licenses = {uid: annotations.get(uid, {}).get("license") or "unknown" for uid in uids}
            keep, drop = set(self.options.licenses), set(self.options.exclude_licenses)
            uids = [
                uid
                for uid in uids
                if (not keep or licenses[uid] in keep) and licenses[uid] not in drop
            ]
        return [
            ObjectRef(
                id=uid,
                source="objaverse",
                license=licenses.get(uid, "unknown"),
                extra={"lvis": category_of[uid]} if uid in category_of else {},
            )
            for uid in uids
        ]

    @property
    def fetch_workers(self) -> int:
        return max(1, self.options.download_workers)

    def fetch_one(self, ref: ObjectRef) -> Path | Exception:
        """The object's GLB (timeouts, retries, deadline: :meth:`_fetch`) and its credits."""
        self._credit([ref])  # also for a failed download: the manifest names the licence
        try:
            return self._fetch(self.object_paths()[ref.id])
        except (ConnectionError, OSError) as error:
            return error

    def fetch(self, refs: list[ObjectRef]) -> dict[str, Path | Exception]:
        workers = max(1, min(self.options.download_workers, len(refs)))
        with ThreadPoolExecutor(workers) as pool:
            return dict(zip([ref.id for ref in refs], pool.map(self.fetch_one, refs)))

    def _credit(self, refs: list[ObjectRef]) -> None:
        """Licence and attribution for meta.json (a metadata hiccup must not stop renders)."""
        try:
            annotations = self.annotations([ref.id for ref in refs])
        except (ConnectionError, OSError, ValueError):
            annotations = {}
        for ref in refs:
            info = annotations.get(ref.id, {})
            if ref.license == "unknown":
                ref.license = info.get("license") or "unknown"
            if info.get("name"):
                ref.extra["name"] = info["name"]
            ref.extra["attribution"] = attribution(ref.id, info, ref.license)

    def release(self, object_ids: list[str]) -> None:
        """With ``delete_after_shard``, delete the cached GLBs of objects now in a shard."""
        if not self.options.delete_after_shard:
            return
        paths = self.object_paths()
        for uid in object_ids:
            if uid in paths:
                (self.cache / paths[uid]).unlink(missing_ok=True)


ANNOTATION_KEYS = ("name", "license", "viewerUrl", "user")  # all a run keeps of an annotation


def _slim(annotations: dict) -> dict:
    """Only the fields a run uses (full annotations of 800K objects would take gigabytes)."""
    slim = {}
    for uid, info in annotations.items():
        kept = {key: info[key] for key in ANNOTATION_KEYS if key in info}
        if isinstance(kept.get("user"), dict):
            kept["user"] = {
                k: kept["user"][k]
                for k in ("username", "displayName", "profileUrl")
                if k in kept["user"]
            }
        slim[uid] = kept
    return slim


def attribution(uid: str, info: dict, license_: str) -> dict:
    """Creator, URL and licence of an Objaverse object (Sketchfab's annotation fields)."""
    user = info.get("user") or {}
    return {
        "name": info.get("name"),
        "creator": user.get("displayName") or user.get("username"),
        "creator_url": user.get("profileUrl"),
        "url": info.get("viewerUrl") or f"https://sketchfab.com/3d-models/{uid}",
        "license": license_,
    }


def write_fake_hub(folder: str | Path, objects: dict[str, tuple[bytes, str, str]]) -> None:
    """A folder laid out like the Objaverse hub (for offline tests and demos): ``objects`` maps
    uid -> (GLB bytes, license, LVIS category). Serve it over HTTP and pass its URL as
    ``base_url``, or use it directly as a filled cache (``cache_dir``/hf-objaverse-v1)."""
    folder = Path(folder)
    paths, metadata, lvis = {}, {}, {}
    for index, (uid, (data, license_, category)) in enumerate(sorted(objects.items())):
        group = f"000-{index // 2:03d}"  # two objects per folder exercises several metadata files
        paths[uid] = f"glbs/{group}/{uid}.glb"
        (folder / paths[uid]).parent.mkdir(parents=True, exist_ok=True)
        (folder / paths[uid]).write_bytes(data)
        metadata.setdefault(group, {})[uid] = {
            "uid": uid,
            "name": uid,
            "license": license_,
            "viewerUrl": f"https://sketchfab.com/3d-models/{uid}",
            "user": {"username": f"creator-{uid[:3]}", "profileUrl": f"https://x.test/{uid[:3]}"},
        }
        lvis.setdefault(category, []).append(uid)
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    for group, data in metadata.items():
        (folder / "metadata" / f"{group}.json.gz").write_bytes(
            gzip.compress(json.dumps(data).encode())
        )
    (folder / "object-paths.json.gz").write_bytes(gzip.compress(json.dumps(paths).encode()))
    (folder / "lvis-annotations.json.gz").write_bytes(gzip.compress(json.dumps(lvis).encode()))
