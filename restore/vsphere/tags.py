"""vSphere tags of a VM, through the vAPI REST endpoint (``/rest/com/vmware/cis/...``).

Role: ``TagReader(session, credentials)`` logs in to vAPI once (HTTP basic authentication: the
SOAP session cookie does not open a vAPI session) and answers ``reader(vm_moref)`` with the VM's
tags as ``[{"id", "name", "category", "category_id", "cardinality"}]``; ``reapply(vm_moref,
saved)`` attaches saved tags to a restored VM (by id, else by category and name; a tag that
does not exist here is reported, not created: tags are global, not a restore's to add);
``close()`` logs out.

Limits: the older ``/rest`` API (what vCenter 6.5+ and the govmomi simulator serve); errors
are exceptions with the HTTP status, never the credentials.
"""
from __future__ import annotations

import base64
import http.client
import json
import urllib.parse
from typing import Any

from .credentials import Credentials
from .errors import VSphereError
from .session import Session


class TagsUnavailable(VSphereError):
    """The vAPI endpoint refused or is absent."""


class TagReader:
    def __init__(self, session: Session, credentials: Credentials) -> None:
        self._session = session
        self._cache: dict[str, dict[str, Any]] = {}
        token = base64.b64encode(f"{credentials.user}:{credentials.password}".encode()).decode()
        reply = self._call("POST", "/rest/com/vmware/cis/session", auth=f"Basic {token}")
        self._sid = reply.get("value") if isinstance(reply, dict) else None
        if not self._sid:
            raise TagsUnavailable("the vAPI login returned no session")

    def _call(self, method: str, path: str, body: Any = None, auth: str | None = None) -> Any:
        conn = http.client.HTTPSConnection(self._session.host, self._session.port,
                                           context=self._session.context, timeout=60)
        headers = {"Accept": "application/json"}
        if auth:
            headers["Authorization"] = auth
        elif getattr(self, "_sid", None):
            headers["vmware-api-session-id"] = self._sid
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except OSError as e:
            raise TagsUnavailable(f"vAPI {path.split('?')[0]}: {e}") from None
        finally:
            conn.close()
        if resp.status >= 300:
            raise TagsUnavailable(f"vAPI {method} {path.split('?')[0]}: HTTP {resp.status}")
        return json.loads(raw) if raw.strip() else None

    def _get(self, kind: str, ident: str) -> dict[str, Any]:
        key = f"{kind}:{ident}"
        if key not in self._cache:
            reply = self._call("GET", f"/rest/com/vmware/cis/tagging/{kind}/id:{urllib.parse.quote(ident)}")
            self._cache[key] = (reply or {}).get("value") or {}
        return self._cache[key]

    def __call__(self, vm_moref: str) -> list[dict[str, Any]]:
        reply = self._call("POST", "/rest/com/vmware/cis/tagging/tag-association?~action=list-attached-tags",
                           {"object_id": {"id": vm_moref, "type": "VirtualMachine"}})
        out = []
        for tag_id in (reply or {}).get("value") or []:
            tag = self._get("tag", tag_id)
            cat = self._get("category", tag.get("category_id", "")) if tag.get("category_id") else {}
            out.append({"id": tag_id, "name": tag.get("name"), "description": tag.get("description"),
                        "category_id": tag.get("category_id"), "category": cat.get("name"),
                        "cardinality": cat.get("cardinality")})
        return out

    def _all_tags(self) -> dict[str, dict[str, Any]]:
        """id -> tag (with its category's name as ``category``), every tag of the server."""
        out = {}
        for tag_id in (self._call("GET", "/rest/com/vmware/cis/tagging/tag") or {}).get("value") or []:
            tag = dict(self._get("tag", tag_id))
            cat = self._get("category", tag.get("category_id", "")) if tag.get("category_id") else {}
            tag["category"] = cat.get("name")
            out[tag_id] = tag
        return out

    def reapply(self, vm_moref: str, saved: list[dict[str, Any]]) -> list[str]:
        """Attach the saved tags to ``vm_moref``; what could not be done, in words."""
        if not saved:
            return []
        here = self._all_tags()
        by_name = {(t.get("category"), t.get("name")): i for i, t in here.items()}
        problems = []
        for tag in saved:
            tag_id = tag.get("id") if tag.get("id") in here else by_name.get(
                (tag.get("category"), tag.get("name")))
            if tag_id is None:
                problems.append(f"tag {tag.get('category')}/{tag.get('name')} does not exist here: "
                                "not re-applied")
                continue
            self._call("POST", f"/rest/com/vmware/cis/tagging/tag-association/id:"
                       f"{urllib.parse.quote(tag_id)}?~action=attach",
                       {"object_id": {"id": vm_moref, "type": "VirtualMachine"}})
        return problems

    def close(self) -> None:
        if getattr(self, "_sid", None):
            try:
                self._call("DELETE", "/rest/com/vmware/cis/session")
            except TagsUnavailable:
                pass
            self._sid = None
