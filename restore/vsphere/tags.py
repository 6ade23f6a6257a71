"""vSphere tags of a VM, through the vAPI REST endpoint (``/rest/com/vmware/cis/...``).

Role: ``TagReader(session, credentials)`` logs in to vAPI once (HTTP basic authentication: the
SOAP session cookie does not open a vAPI session) and answers ``reader(vm_moref)`` with the VM's
tags as ``[{"id", "name", "category", "category_id", "cardinality"}]``; ``reapply(vm_moref,
saved)`` attaches saved tags to a restored VM (by id, else by category and name; a tag that
does not exist here is reported, not created: tags are global, not a restore's to add);
``close()`` logs out.

Answers are untrusted: each is at most ``MAX_ANSWER`` bytes of JSON of the documented shape
(``{"value": ...}``; ids and names are strings), at most ``MAX_TAGS`` tags per VM; anything
else is ``TagsUnavailable`` (the backup records a warning and goes on without tags).

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
from .errors import AnswerTooLarge, VSphereError
from .session import Session, read_bounded

MAX_ANSWER = 4 << 20  # one vAPI answer (a tag, a category, a VM's tag ids)
MAX_TAGS = 10_000     # tags attached to one VM
_TEXT_FIELDS = ("name", "description", "category_id", "cardinality")


class TagsUnavailable(VSphereError):
    """The vAPI endpoint refused or is absent."""


def decode(raw: bytes, what: str) -> Any:
    """A vAPI answer's JSON (None for an empty body); TagsUnavailable if it is not JSON."""
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise TagsUnavailable(f"{what}: the answer is not JSON") from None


def parse_ids(reply: Any) -> list[str]:
    """``{"value": ["id", ...]}`` -> the ids (at most ``MAX_TAGS``)."""
    ids = reply.get("value") if isinstance(reply, dict) else None
    if ids is None:
        return []
    if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
        raise TagsUnavailable("vAPI: the list of attached tags is not a list of ids")
    if len(ids) > MAX_TAGS:
        raise TagsUnavailable(f"vAPI: {len(ids)} tags attached, more than {MAX_TAGS}")
    return ids


def parse_object(reply: Any, kind: str) -> dict[str, Any]:
    """``{"value": {...}}`` of a tag or category -> its text fields (others dropped)."""
    value = reply.get("value") if isinstance(reply, dict) else None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TagsUnavailable(f"vAPI: the {kind} is not an object")
    out = {}
    for field in _TEXT_FIELDS:
        v = value.get(field)
        if v is not None and not isinstance(v, str):
            raise TagsUnavailable(f"vAPI: the {kind}'s {field} is not text")
        out[field] = v
    return out


class TagReader:
    def __init__(self, session: Session, credentials: Credentials) -> None:
        self._session = session
        self._cache: dict[str, dict[str, Any]] = {}
        token = base64.b64encode(f"{credentials.user}:{credentials.password}".encode()).decode()
        reply = self._call("POST", "/rest/com/vmware/cis/session", auth=f"Basic {token}")
        self._sid = reply.get("value") if isinstance(reply, dict) else None
        if not isinstance(self._sid, str) or not self._sid or len(self._sid) > 4096:
            self._sid = None
            raise TagsUnavailable("the vAPI login returned no session")

    def _call(self, method: str, path: str, body: Any = None, auth: str | None = None) -> Any:
        conn = self._session.https(timeout=60)
        headers = {"Accept": "application/json"}
        if auth:
            headers["Authorization"] = auth
        elif sid := getattr(self, "_sid", None):
            headers["vmware-api-session-id"] = sid
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = read_bounded(resp, MAX_ANSWER, f"vAPI {path.split('?')[0]}")
        except AnswerTooLarge as e:
            raise TagsUnavailable(str(e)) from None
        except (OSError, http.client.HTTPException) as e:
            raise TagsUnavailable(f"vAPI {path.split('?')[0]}: {e}") from None
        finally:
            conn.close()
        if resp.status >= 300:
            raise TagsUnavailable(f"vAPI {method} {path.split('?')[0]}: HTTP {resp.status}")
        return decode(raw, f"vAPI {method} {path.split('?')[0]}")

    def _get(self, kind: str, ident: str) -> dict[str, Any]:
        key = f"{kind}:{ident}"
        if key not in self._cache:
            reply = self._call("GET", f"/rest/com/vmware/cis/tagging/{kind}/id:{urllib.parse.quote(ident)}")
            self._cache[key] = parse_object(reply, kind)
        return self._cache[key]

    def __call__(self, vm_moref: str) -> list[dict[str, Any]]:
        reply = self._call("POST", "/rest/com/vmware/cis/tagging/tag-association?~action=list-attached-tags",
                           {"object_id": {"id": vm_moref, "type": "VirtualMachine"}})
        out = []
        for tag_id in parse_ids(reply):
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
