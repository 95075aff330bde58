"""Stand-ins for the real APIs of doi.org and the data repositories, on loopback, for tests and bench/.

doi.org, Zenodo, Figshare, Dataverse, HydroShare and CKAN cannot be reached from here (and must
not be contacted), so this threaded HTTP server stands in for them: it answers the paths Kiln's
resolver and builder call on the real services, with JSON computed from the records a test adds
(real files, real zip archives the test makes). Each service lives under its own prefix, which is
the base URL the settings name:

    /doi/<doi>                                 doi.org: 302 to the DOI's landing page; 404 for an unknown DOI
    /zenodo/records/<id>                       Zenodo: a record's landing page
    /zenodo/doi/<concept doi>                  Zenodo: a concept DOI's page, 302 to its latest version
    /zenodo/api/records/<id>                   Zenodo API: the record (links.files)
    /zenodo/api/records/<id>/files             Zenodo API: its file entries (key, size, links.content)
    /zenodo/api/records/<id>/files/<key>/content   the file's bytes
    /figshare/articles/<type>/<title>/<id>[/<v>]   Figshare: an article's landing page
    /figshare-api/v2/articles/<id>/versions    Figshare API: the article's versions
    /figshare-api/v2/articles/<id>/versions/<v>    Figshare API: one version (files: name, download_url, is_link_only)
    /figshare-files/<file id>                  Figshare's ndownloader: 302 to the stored bytes (/raw/...), as S3
    /dataverse/citation?persistentId=<pid>     Dataverse: landing page (302 to dataset.xhtml, as the real one)
    /dataverse/api/datasets/:persistentId?persistentId=<pid>   Dataverse API: the dataset (latestVersion)
    /dataverse/api/datasets/:persistentId/versions/<v>?persistentId=<pid>   one version (files)
    /dataverse/api/files/:persistentId?persistentId=<file pid>&returnDatasetVersion=true   a file's dataset
    /dataverse/api/access/datafile/<id>?format=original   a file's bytes
    /hydroshare/resource/<id>                  HydroShare: a resource's landing page
    /hydroshare/hsapi/resource/<id>/scimeta/elements   HydroShare API: its science metadata (dates: modified)
    /hydroshare/django_s3/download/bags/<id>.zip   its BagIt zip: "being prepared" JSON the first ``prepare`` times,
                                               then a 302 to the stored zip (/raw/..., as S3)
    /ckan/dataset/<name>                       CKAN: a dataset's page
    /ckan/api/3/action/package_show?id=<name>  CKAN API: the dataset now (metadata_modified, resources)
    /ckan/api/3/action/activity_data_show?id=<activity>&object_type=package   the dataset as it was then
    /swh/api/1/directory/<id>/                 Software Heritage API: a directory's entries; 404 for one it lacks
    /swh/api/1/revision/<id>/                  a revision (its directory)
    /swh/api/1/release/<id>/                   a release (target_type, target)
    /swh/api/1/snapshot/<id>/?branches_from=<name>&branches_count=<n>   a snapshot's branches, a page at a time
    POST /swh/api/1/vault/flat/<swhid>/        the vault: cooking asked for ("new", or "done" once cooked; 404 unknown)
    /swh/api/1/vault/flat/<swhid>/             its progress: "pending" for SwhDirectory.cook_polls answers, then
                                               "done" or "failed" (cook_error); 404 when cooking was never asked for
    /swh/api/1/vault/flat/<swhid>/raw/         302 to /raw/swh-<id>.tar.gz: a real tar.gz of one folder named by the
                                               SWHID (the vault's flat bundle), as the vault redirects to its storage
    /raw/<name>                                bytes put there by a test (plain downloads, redirect targets)
    /redirect?to=<url>                         302 to <url> (a link that leads elsewhere)

``overrides`` answers a path with a canned (status, headers, body) instead, for failures;
``authorizations`` records each request's path with its Authorization header (tokens must reach
APIs only).
"""

from __future__ import annotations

import hashlib
import io
import json
import stat
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit


def make_zip(files: dict[str, bytes], links: dict[str, str] | None = None,
             special: dict[str, int] | None = None) -> bytes:
    """A real zip archive: ``files`` (name -> bytes; a name ending in "/" is a folder), symbolic ``links``
    (name -> target, as Unix zip tools store them; written first) and ``special`` entries (name -> file type, e.g. stat.S_IFCHR)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
        for name, data in files.items():
            zf.writestr(name, data)
        for name, kind in (special or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (kind | 0o644) << 16
            zf.writestr(info, b"")
    return buf.getvalue()


def make_targz(files: dict[str, bytes], links: dict[str, str] | None = None, special: dict[str, bytes] | None = None,
               hardlinks: dict[str, str] | None = None, pax: dict[str, str] | None = None) -> bytes:
    """A real gzipped tar: symbolic ``links`` (name -> target; first, as in make_zip), ``files`` (name -> bytes; a
    name ending in "/" is a folder; names ending in ``.sh`` executable), ``hardlinks`` (name -> target),
    ``special`` entries (name -> tarfile type, e.g. tarfile.CHRTYPE) and a ``pax`` header on the first member."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        first = True

        def add(info: tarfile.TarInfo, data: bytes = b"") -> None:
            nonlocal first
            if first and pax:
                info.pax_headers = dict(pax)
            first = False
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)

        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            add(info)
        for name, data in files.items():
            if name.endswith("/"):
                info = tarfile.TarInfo(name.rstrip("/"))
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                add(info)
            else:
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o755 if name.endswith(".sh") else 0o644
                add(info, data)
        for name, target in (hardlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.LNKTYPE, target
            add(info)
        for name, kind in (special or {}).items():
            info = tarfile.TarInfo(name)
            info.type = kind
            add(info)
    return buf.getvalue()


@dataclass
class SwhDirectory:
    """A directory of the Software Heritage stand-in, and how its vault cooking goes."""

    files: dict[str, bytes]
    archive: bytes  # the flat bundle the vault serves
    cook_polls: int = 0  # progress answers saying "pending" before the last one
    cook_error: str | None = None  # the last one says "failed" with this message, instead of "done"


@dataclass
class ZenodoRecord:
    files: dict[str, bytes]
    concept: str | None = None  # the concept record id this is a version of
    links: dict[str, str] = field(default_factory=dict)  # file name -> a download link other than the stand-in's own


@dataclass
class FigshareArticle:
    versions: dict[int, dict[str, bytes]]  # version -> files
    link_only: list[str] = field(default_factory=list)  # names listed as links to elsewhere, not files


@dataclass
class DataverseDataset:
    id: int
    versions: dict[tuple[int, int], dict[str, bytes]]  # (major, minor) -> path in the dataset -> bytes
    files: dict[int, bytes] = field(default_factory=dict)  # file id -> bytes (every version's)


@dataclass
class HydroShareResource:
    bag: bytes  # the BagIt zip
    modified: str  # the "modified" date as HydroShare writes it
    prepare: int = 0  # how many more times the bag is "being prepared" before it is served


@dataclass
class CKANDataset:
    modified: str  # metadata_modified now
    resources: list[dict[str, Any]]  # as package_show lists them (id, url, ...)
    activities: dict[str, tuple[str, list[dict[str, Any]]]] = field(default_factory=dict)  # id -> (modified, resources)


def make_bag(resource: str, files: dict[str, bytes]) -> bytes:
    """A HydroShare resource's BagIt zip: bag metadata around ``<resource>/data/contents/<files>``."""
    return make_zip({f"{resource}/bagit.txt": b"BagIt-Version: 0.97\nTag-File-Character-Encoding: UTF-8\n",
                     f"{resource}/manifest-md5.txt": b"", f"{resource}/data/resourcemap.xml": b"<rdf/>",
                     **{f"{resource}/data/contents/{name}": data for name, data in files.items()}})


@dataclass
class DataHost:
    """The stand-in's state: what it serves, and the paths it was asked for."""

    url: str = ""
    dois: dict[str, str] = field(default_factory=dict)  # DOI -> landing URL
    zenodo: dict[str, ZenodoRecord] = field(default_factory=dict)
    figshare: dict[str, FigshareArticle] = field(default_factory=dict)
    dataverse: dict[str, DataverseDataset] = field(default_factory=dict)  # "doi:<doi>" -> dataset
    dataverse_file_dois: dict[str, str] = field(default_factory=dict)  # a file's "doi:..." -> its dataset's
    hydroshare: dict[str, HydroShareResource] = field(default_factory=dict)
    ckan: dict[str, CKANDataset] = field(default_factory=dict)
    swh_dirs: dict[str, SwhDirectory] = field(default_factory=dict)  # sha1_git -> directory
    swh_revisions: dict[str, str] = field(default_factory=dict)  # sha1_git -> its directory's
    swh_releases: dict[str, tuple[str, str]] = field(default_factory=dict)  # sha1_git -> (target_type, target)
    swh_snapshots: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)  # -> branch -> (type, target)
    swh_cooking: dict[str, int] = field(default_factory=dict)  # SWHID -> progress answers given since asked
    raw: dict[str, bytes] = field(default_factory=dict)
    overrides: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    authorizations: list[tuple[str, str]] = field(default_factory=list)  # (path, Authorization header or "")
    server: ThreadingHTTPServer | None = None

    def base(self, service: str) -> str:
        """The base URL of a stand-in service (zenodo, doi, ...)."""
        return f"{self.url}/{service}"

    def add_zenodo(self, record: str, files: dict[str, bytes], concept: str | None = None,
                   links: dict[str, str] | None = None) -> str:
        """A Zenodo record with its version DOI (and its concept's DOI leading to the latest version); its DOI."""
        self.zenodo[record] = ZenodoRecord(files, concept, links or {})
        doi = f"10.5281/zenodo.{record}"
        self.dois[doi] = f"{self.base('zenodo')}/records/{record}"
        if concept:
            concept_doi = f"10.5281/zenodo.{concept}"
            self.dois[concept_doi] = f"{self.base('zenodo')}/doi/{concept_doi}"
        return doi

    def add_figshare(self, article: str, versions: dict[int, dict[str, bytes]],
                     link_only: list[str] | None = None) -> str:
        """A Figshare article with its DOIs (unversioned and each ``.vN``); the unversioned DOI."""
        self.figshare[article] = FigshareArticle(versions, link_only or [])
        doi = f"10.6084/m9.figshare.{article}"
        landing = f"{self.base('figshare')}/articles/dataset/a_title/{article}"
        self.dois[doi] = landing
        for version in versions:
            self.dois[f"{doi}.v{version}"] = f"{landing}/{version}"
        return doi

    def add_dataverse(self, doi: str, versions: dict[tuple[int, int], dict[str, bytes]]) -> str:
        """A Dataverse dataset with its DOI leading to its citation page; the DOI."""
        dataset = DataverseDataset(1000 + len(self.dataverse), versions)
        self.dataverse[f"doi:{doi}"] = dataset
        self.dois[doi] = f"{self.base('dataverse')}/citation?persistentId=doi:{doi}"
        return doi

    def add_hydroshare(self, resource: str, files: dict[str, bytes], modified: str = "2026-11-30T10:20:30.123456Z",
                       prepare: int = 0, bag: bytes | None = None) -> str:
        """A HydroShare resource (its bag made of ``files`` unless given); its DOI (10.4211/hs.<id>)."""
        self.hydroshare[resource] = HydroShareResource(bag if bag is not None else make_bag(resource, files), modified,
                                                       prepare)
        doi = f"10.4211/hs.{resource}"
        self.dois[doi] = f"{self.base('hydroshare')}/resource/{resource}/"
        return doi

    def add_ckan(self, name: str, files: dict[str, bytes], modified: str = "2026-11-30T10:20:30.123456",
                 activities: dict[str, tuple[str, dict[str, bytes]]] | None = None) -> str:
        """A CKAN dataset whose resources are ``files`` (served from /raw), with earlier versions by activity
        id; the dataset's URL."""
        def resources(version: str, files: dict[str, bytes]) -> list[dict[str, Any]]:
            listed = []
            for i, (file_name, data) in enumerate(files.items()):
                self.raw[f"ckan-{name}-{version}-{file_name}"] = data
                listed.append({"id": f"res-{i}", "package_id": name, "size": len(data),
                               "url": f"{self.url}/raw/{quote(f'ckan-{name}-{version}-{file_name}', safe='')}"
                               if "://" not in file_name else file_name})
            return listed
        self.ckan[name] = CKANDataset(modified, resources("now", files),
                                      {a: (m, resources(a, f)) for a, (m, f) in (activities or {}).items()})
        return f"{self.base('ckan')}/dataset/{name}"

    def _swh_id(self, *parts: object) -> str:
        # Not git's hashing of the object (the stand-in need not compute trees), but as unique and as long.
        return hashlib.sha1(repr((len(self.swh_dirs) + len(self.swh_revisions) + len(self.swh_releases)
                                  + len(self.swh_snapshots), *parts)).encode(), usedforsecurity=False).hexdigest()

    def add_swh_directory(self, files: dict[str, bytes], archive: bytes | None = None, cook_polls: int = 0,
                          cook_error: str | None = None) -> str:
        """A directory whose flat bundle holds ``files`` in one folder named by its SWHID (or is ``archive``); its id."""
        sha1_git = self._swh_id("dir", sorted(files.items()))
        if archive is None:
            archive = make_targz({f"swh:1:dir:{sha1_git}/": b""}
                                 | {f"swh:1:dir:{sha1_git}/{name}": data for name, data in files.items()})
        self.swh_dirs[sha1_git] = SwhDirectory(files, archive, cook_polls, cook_error)
        self.raw[f"swh-{sha1_git}.tar.gz"] = archive
        return sha1_git

    def add_swh_revision(self, directory: str) -> str:
        """A revision (a commit) of ``directory``; its id."""
        sha1_git = self._swh_id("rev", directory)
        self.swh_revisions[sha1_git] = directory
        return sha1_git

    def add_swh_release(self, target_type: str, target: str) -> str:
        """A release (a tag) of ``target`` (a revision's or a directory's id, by ``target_type``); its id."""
        sha1_git = self._swh_id("rel", target_type, target)
        self.swh_releases[sha1_git] = (target_type, target)
        return sha1_git

    def add_swh_snapshot(self, branches: dict[str, tuple[str, str]]) -> str:
        """A snapshot of branches (name -> (target_type, target); "alias" targets another branch's name); its id."""
        sha1_git = self._swh_id("snp", sorted(branches.items()))
        self.swh_snapshots[sha1_git] = branches
        return sha1_git

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    host: DataHost

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/octet-stream") -> None:
        self.send_response(status)
        headers = {"Content-Type": content_type, **(headers or {})}
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers:  # a test may announce a length it never sends
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, body: Any) -> None:
        self._send(status, json.dumps(body).encode(), content_type="application/json")

    def _found(self, to: str) -> None:
        self._send(302, b"", {"Location": to}, "text/html")

    def do_POST(self) -> None:
        """Only the Software Heritage vault is asked with POST (its body, a JSON object, says nothing)."""
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET(post=True)

    def do_GET(self, post: bool = False) -> None:
        self.host.requests.append(f"POST {self.path}" if post else self.path)
        self.host.authorizations.append((self.path, self.headers.get("Authorization", "")))
        parts = urlsplit(self.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        if post:
            return self._swh_cook(path) if path not in self.host.overrides else self._send(*self._override(path))
        if path in self.host.overrides:
            status, headers, body = self.host.overrides[path]
            return self._send(status, body, headers)
        service, _, rest = path.lstrip("/").partition("/")
        handler = getattr(self, f"_{service.replace('-', '_')}", None)
        if handler is None:
            return self._json(404, {"message": "not found"})
        handler(rest, query)

    def _override(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        status, headers, body = self.host.overrides[path]
        return status, body, headers

    def _swh_not_found(self, reason: str) -> None:
        self._json(404, {"exception": "NotFoundExc", "reason": reason})

    def _swh_receipt(self, swhid: str, status: str, message: str | None) -> None:
        self._json(200, {"fetch_url": f"{self.host.base('swh')}/api/1/vault/flat/{swhid}/raw/", "id": 1,
                         "progress_message": message, "status": status, "swhid": swhid})

    def _swh_cook(self, path: str) -> None:
        """POST <api>/vault/flat/<swhid>/: cooking asked for; "done" at once when there is nothing left to wait for."""
        swhid = path.removeprefix("/swh/api/1/vault/flat/").rstrip("/")
        directory = self.host.swh_dirs.get(swhid.removeprefix("swh:1:dir:"))
        if not path.startswith("/swh/api/1/vault/flat/swh:1:dir:") or directory is None:
            return self._swh_not_found(f"{swhid} not found.")
        self.host.swh_cooking.setdefault(swhid, 0)
        waiting = directory.cook_polls or directory.cook_error
        self._swh_receipt(swhid, "new" if waiting else "done", None)

    def _swh(self, rest: str, query: dict[str, list[str]]) -> None:
        segments = rest.removeprefix("api/1/").rstrip("/").split("/")
        kind, sha1_git = (segments + ["", ""])[:2]
        if kind == "vault" and sha1_git == "flat" and len(segments) >= 3:
            swhid, raw = segments[2], segments[3:] == ["raw"]
            directory = self.host.swh_dirs.get(swhid.removeprefix("swh:1:dir:"))
            if directory is None or swhid not in self.host.swh_cooking:
                return self._swh_not_found(f"Cooking of {swhid} was never requested.")
            if raw:
                return self._found(f"{self.host.url}/raw/swh-{swhid.removeprefix('swh:1:dir:')}.tar.gz")
            answered = self.host.swh_cooking[swhid] = self.host.swh_cooking[swhid] + 1
            if answered <= directory.cook_polls:
                return self._swh_receipt(swhid, "pending", f"Processing... {answered}/{directory.cook_polls}")
            if directory.cook_error:
                return self._swh_receipt(swhid, "failed", directory.cook_error)
            return self._swh_receipt(swhid, "done", None)
        if kind == "directory" and sha1_git in self.host.swh_dirs:
            tops = {name.split("/", 1)[0]: "/" in name for name in self.host.swh_dirs[sha1_git].files}
            return self._json(200, [{"name": name, "type": "dir" if is_dir else "file", "dir_id": sha1_git}
                                    for name, is_dir in sorted(tops.items())])
        if kind == "revision" and sha1_git in self.host.swh_revisions:
            return self._json(200, {"id": sha1_git, "directory": self.host.swh_revisions[sha1_git], "message": "a commit"})
        if kind == "release" and sha1_git in self.host.swh_releases:
            target_type, target = self.host.swh_releases[sha1_git]
            return self._json(200, {"id": sha1_git, "name": "v1", "target": target, "target_type": target_type})
        if kind == "snapshot" and sha1_git in self.host.swh_snapshots:
            branches = self.host.swh_snapshots[sha1_git]
            start, count = query.get("branches_from", [""])[0], int(query.get("branches_count", ["1000"])[0])
            names = sorted(name for name in branches if name >= start)
            page = {name: {"target": branches[name][1], "target_type": branches[name][0]} for name in names[:count]}
            return self._json(200, {"id": sha1_git, "branches": page,
                                    "next_branch": names[count] if len(names) > count else None})
        self._swh_not_found(f"{kind.capitalize()} with sha1_git {sha1_git} not found.")

    def _doi(self, doi: str, query: dict[str, list[str]]) -> None:
        landing = self.host.dois.get(doi)
        if landing is None:
            return self._send(404, b"DOI Not Found", content_type="text/html")
        self._found(landing)

    def _raw(self, name: str, query: dict[str, list[str]]) -> None:
        if name not in self.host.raw:
            return self._send(404, b"not found")
        self._send(200, self.host.raw[name])

    def _redirect(self, rest: str, query: dict[str, list[str]]) -> None:
        self._found(query["to"][0])

    def _zenodo(self, rest: str, query: dict[str, list[str]]) -> None:
        base = self.host.base("zenodo")
        records = self.host.zenodo
        segments = rest.split("/")
        if segments[0] == "records" and len(segments) == 2 and segments[1] in records:
            return self._send(200, b"<html>a Zenodo record</html>", content_type="text/html")
        if segments[0] == "doi":
            concept = "/".join(segments[1:]).rsplit(".", 1)[-1]
            versions = sorted((r for r, rec in records.items() if rec.concept == concept), key=int)
            return self._found(f"{base}/records/{versions[-1]}") if versions else self._send(404, b"", content_type="text/html")
        if segments[:2] != ["api", "records"] or len(segments) < 3 or segments[2] not in records:
            return self._json(404, {"status": 404, "message": "The persistent identifier does not exist."})
        record_id, record = segments[2], records[segments[2]]
        api = f"{base}/api/records/{record_id}"
        entries = [{"key": name, "size": len(data), "checksum": "", "links": {
            "self": f"{api}/files/{quote(name)}",
            "content": record.links.get(name, f"{api}/files/{quote(name)}/content")}}
            for name, data in record.files.items()]
        if len(segments) == 3:
            return self._json(200, {"id": int(record_id), "conceptrecid": record.concept or record_id,
                                    "metadata": {"title": f"record {record_id}"},
                                    "links": {"self": api, "files": f"{api}/files"},
                                    "files": [{**e, "links": {"self": e["links"]["content"]}} for e in entries]})
        if segments[3:] == ["files"]:
            return self._json(200, {"entries": entries})
        if len(segments) >= 6 and segments[3] == "files" and segments[-1] == "content":
            name = "/".join(segments[4:-1])
            if name in record.files:
                return self._send(200, record.files[name])
        self._json(404, {"status": 404, "message": "not found"})

    def _figshare(self, rest: str, query: dict[str, list[str]]) -> None:
        self._send(200, b"<html>a Figshare article</html>", content_type="text/html")

    def _figshare_files(self, file_id: str, query: dict[str, list[str]]) -> None:
        article, version, name = file_id.split("-", 2)
        self.host.raw[f"s3-{file_id}"] = self.host.figshare[article].versions[int(version)][unquote(name)]
        self._found(f"{self.host.url}/raw/s3-{file_id}")

    def _figshare_api(self, rest: str, query: dict[str, list[str]]) -> None:
        segments = rest.split("/")
        if segments[:2] != ["v2", "articles"] or len(segments) < 4 or segments[3] != "versions" \
                or segments[2] not in self.host.figshare:
            return self._json(404, {"message": "Entity not found: article", "code": "EntityNotFound"})
        article_id, article = segments[2], self.host.figshare[segments[2]]
        api = f"{self.host.base('figshare-api')}/v2/articles/{article_id}"
        if len(segments) == 4:
            return self._json(200, [{"version": v, "url": f"{api}/versions/{v}"} for v in sorted(article.versions)])
        version = int(segments[4]) if segments[4].isdigit() else -1
        if version not in article.versions:
            return self._json(404, {"message": "Entity not found: article version", "code": "EntityNotFound"})
        files = [{"id": i, "name": name, "size": len(data), "is_link_only": name in article.link_only,
                  "download_url": f"{self.host.base('figshare-files')}/{article_id}-{version}-{quote(name, safe='')}"}
                 for i, (name, data) in enumerate(article.versions[version].items())]
        self._json(200, {"id": int(article_id), "version": version, "files": files})


    def _dataverse(self, rest: str, query: dict[str, list[str]]) -> None:
        pid = query.get("persistentId", [""])[0]
        if rest == "citation":
            return self._found(f"{self.host.base('dataverse')}/dataset.xhtml?persistentId={pid}")
        if rest == "dataset.xhtml":
            return self._send(200, b"<html>a dataset</html>", content_type="text/html")
        if rest.startswith("api/access/datafile/"):
            file_id = int(rest.rsplit("/", 1)[1])
            found = [d.files[file_id] for d in self.host.dataverse.values() if file_id in d.files]
            return self._send(200, found[0]) if found else self._json(404, {"status": "ERROR"})
        if rest == "api/files/:persistentId":
            parent = self.host.dataverse_file_dois.get(pid)
            return self._json(200, {"status": "OK", "data": {"datasetVersion": {"datasetPersistentId": parent}}}) \
                if parent else self._json(404, {"status": "ERROR", "message": "File not found"})
        dataset = self.host.dataverse.get(pid)
        if dataset is None or not rest.startswith("api/datasets/:persistentId"):
            return self._json(404, {"status": "ERROR", "message": f"Dataset with Persistent ID {pid} not found."})
        authority, _, identifier = pid.removeprefix("doi:").partition("/")
        if rest == "api/datasets/:persistentId":
            major, minor = max(dataset.versions)
            return self._json(200, {"status": "OK", "data": {
                "id": dataset.id, "protocol": "doi", "authority": authority, "identifier": identifier,
                "persistentUrl": f"https://doi.org/{pid.removeprefix('doi:')}",
                "latestVersion": {"versionNumber": major, "versionMinorNumber": minor, "versionState": "RELEASED"}}})
        wanted = rest.rsplit("/", 1)[1]
        key = next((v for v in dataset.versions if f"{v[0]}.{v[1]}" == wanted), None)
        if key is None:
            return self._json(404, {"status": "ERROR", "message": "Dataset version not found"})
        files = []
        for path, data in dataset.versions[key].items():
            file_id = 100 * dataset.id + len(dataset.files)
            dataset.files[file_id] = data
            folder, _, label = path.rpartition("/")
            files.append({"label": label, **({"directoryLabel": folder} if folder else {}),
                          "dataFile": {"id": file_id, "filesize": len(data), "persistentId": ""}})
        self._json(200, {"status": "OK", "data": {"versionNumber": key[0], "versionMinorNumber": key[1], "files": files}})


    def _hydroshare(self, rest: str, query: dict[str, list[str]]) -> None:
        segments = rest.strip("/").split("/")
        if segments[0] == "resource" and len(segments) == 2 and segments[1] in self.host.hydroshare:
            return self._send(200, b"<html>a HydroShare resource</html>", content_type="text/html")
        if segments[:2] == ["hsapi", "resource"] and segments[3:] == ["scimeta", "elements"]:
            resource = self.host.hydroshare.get(segments[2])
            if resource is None:
                return self._json(404, {"detail": "No resource was found for resource id"})
            return self._json(200, {"title": "a resource", "dates": [
                {"type": "created", "start_date": "2020-01-01T00:00:00Z"},
                {"type": "modified", "start_date": resource.modified}]})
        if segments[:3] == ["django_s3", "download", "bags"] and len(segments) == 4:
            resource_id = segments[3].removesuffix(".zip")
            found = self.host.hydroshare.get(resource_id)
            if found is None:
                return self._json(404, {"detail": "not found"})
            if found.prepare > 0:
                found.prepare -= 1
                return self._json(200, {"bag_status": "Not ready", "task_id": "t-1"})
            self.host.raw[f"bag-{resource_id}.zip"] = found.bag
            return self._found(f"{self.host.url}/raw/bag-{resource_id}.zip")
        self._json(404, {"detail": "not found"})

    def _ckan(self, rest: str, query: dict[str, list[str]]) -> None:
        if rest.startswith("dataset/"):
            return self._send(200, b"<html>a CKAN dataset</html>", content_type="text/html")
        missing = {"success": False, "error": {"message": "Not found", "__type": "Not Found Error"}}
        wanted = query.get("id", [""])[0]
        if rest == "api/3/action/package_show":
            dataset = self.host.ckan.get(wanted)
            return self._json(200, {"success": True, "result": {"name": wanted, "metadata_modified": dataset.modified,
                                                                 "resources": dataset.resources}}) \
                if dataset else self._json(404, missing)
        if rest == "api/3/action/activity_data_show" and query.get("object_type") == ["package"]:
            for name, dataset in self.host.ckan.items():
                if wanted in dataset.activities:
                    modified, resources = dataset.activities[wanted]
                    return self._json(200, {"success": True, "result": {"name": name, "metadata_modified": modified,
                                                                         "resources": resources}})
            return self._json(404, missing)
        self._json(404, missing)


def start_datahost() -> DataHost:
    """The stand-in, serving on a free loopback port in a background thread (``stop`` it when done)."""
    host = DataHost()
    handler = type("Handler", (_Handler,), {"host": host})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="datahost", daemon=True).start()
    host.server = server
    host.url = f"http://127.0.0.1:{server.server_address[1]}"
    return host
