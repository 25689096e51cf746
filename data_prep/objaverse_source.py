"""Objaverse 1.0 through the ``objaverse`` package, made safe for long unattended runs.

The package (0.1.7) owns the uid list, object paths, annotations, LVIS categories and the cache
layout (``~/.objaverse/hf-objaverse-v1/...``); we read everything through it. Its downloader has
no timeout or retry, one failure ends its whole pool, and it re-globs the entire cache after each
file, so files are fetched here instead: into the package's own cache paths, with the package's
``.tmp``-then-rename protocol (files already cached are never fetched again), in parallel, with
a timeout and retries. Offline, :class:`ObjaverseOfflineError` is raised at once.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import time
import urllib.error
import urllib.request
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


class ObjaverseSource(Source):
    name = "objaverse"

    def __init__(self, options: ObjaverseOptions):
        self.options = options
        root = (
            Path(options.cache_dir).expanduser() if options.cache_dir else Path(objaverse.BASE_PATH)
        )
        self.cache = root / "hf-objaverse-v1"
        self._online_checked = False

    @contextlib.contextmanager
    def _package_cache(self):
        """Point the package at our cache folder (it has no parameter for it)."""
        saved = objaverse._VERSIONED_PATH
        objaverse._VERSIONED_PATH = str(self.cache)
        try:
            yield objaverse
        finally:
            objaverse._VERSIONED_PATH = saved

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
        """The cached file at ``relative`` (hub layout), downloaded with timeout and retries."""
        local = self.cache / relative
        if local.exists():
            return local
        self._check_online()
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(local.name + ".tmp")
        url = f"{self.options.base_url}/{relative}"
        error: Exception | None = None
        for attempt in range(self.options.download_retries + 1):
            if attempt:
                time.sleep(min(0.5 * 2**attempt, 10.0))
            try:
                with urllib.request.urlopen(url, timeout=self.options.download_timeout_s) as reply:
                    with open(tmp, "wb") as handle:
                        while chunk := reply.read(1 << 20):
                            handle.write(chunk)
                tmp.rename(local)
                return local
            except urllib.error.HTTPError as http_error:
                error = http_error
                if http_error.code in (401, 403, 404):
                    break  # retrying will not help
            except (urllib.error.URLError, OSError, TimeoutError) as io_error:
                error = io_error
        tmp.unlink(missing_ok=True)
        raise ConnectionError(f"{url}: {error}")

    # --- listing --------------------------------------------------------------------------
    def _uids(self) -> list[str]:
        self._fetch("object-paths.json.gz")
        with self._package_cache() as package:
            return package.load_uids()

    def _lvis(self) -> dict[str, list[str]]:
        self._fetch("lvis-annotations.json.gz")
        with self._package_cache() as package:
            return package.load_lvis_annotations()

    def annotations(self, uids: list[str]) -> dict[str, dict]:
        """Package annotations of ``uids`` (fetches the metadata files they live in)."""
        with self._package_cache() as package:
            paths = package._load_object_paths()
        folders = sorted({paths[uid].split("/")[1] for uid in uids if uid in paths})
        workers = max(1, min(self.options.download_workers, len(folders)))
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda f: self._fetch(f"metadata/{f}.json.gz"), folders))
        with self._package_cache() as package:
            return package.load_annotations(uids)

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

    def fetch(self, refs: list[ObjectRef]) -> dict[str, Path | Exception]:
        with self._package_cache() as package:
            paths = package._load_object_paths()

        def one(ref: ObjectRef) -> Path | Exception:
            try:
                return self._fetch(paths[ref.id])
            except (ConnectionError, OSError) as error:
                return error

        workers = max(1, min(self.options.download_workers, len(refs)))
        with ThreadPoolExecutor(workers) as pool:
            results = dict(zip([ref.id for ref in refs], pool.map(one, refs)))
        unlicensed = [ref for ref in refs if ref.license == "unknown"]
        if unlicensed:
            try:  # licence and name for meta.json; a metadata hiccup must not stop renders
                annotations = self.annotations([ref.id for ref in unlicensed])
            except (ConnectionError, OSError):
                annotations = {}
            for ref in unlicensed:
                info = annotations.get(ref.id, {})
                ref.license = info.get("license") or "unknown"
                if info.get("name"):
                    ref.extra["name"] = info["name"]
        return results


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
        metadata.setdefault(group, {})[uid] = {"uid": uid, "name": uid, "license": license_}
        lvis.setdefault(category, []).append(uid)
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    for group, data in metadata.items():
        (folder / "metadata" / f"{group}.json.gz").write_bytes(
            gzip.compress(json.dumps(data).encode())
        )
    (folder / "object-paths.json.gz").write_bytes(gzip.compress(json.dumps(paths).encode()))
    (folder / "lvis-annotations.json.gz").write_bytes(gzip.compress(json.dumps(lvis).encode()))
