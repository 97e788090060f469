"""Model versions in the data dir (`models/registry.json`, written atomically): the base model, every
fine-tune and re-index, with what it was trained on, the gate's numbers and its status.

Status: serving (exactly one), retired (served before; rollback can return to it), rejected (failed the gate;
kept for inspection until `rift models --prune`, never served), failed (training or encoding did not finish).
The serving version survives restarts: `Rift` loads it at start-up instead of the configured model, as long as
it descends from the configured model (changing `model` in the settings starts a new lineage).
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from server.errors import RiftError

Status = Literal["serving", "retired", "rejected", "failed"]
WEIGHTS_DELETED = "weights deleted"  # a note: the version's weight folder is gone (it can never serve again)


@dataclass
class ModelVersion:
    version: str  # the engine's model_version: the configured name for a base model, else a generated id
    kind: str  # base | fine-tune | reindex
    location: str  # what sentence-transformers loads: a folder or a hub name
    base_model: str  # root of the lineage: the configured model this descends from
    status: str
    created_at: float
    parent: str | None = None
    dimension: int | None = None
    strategy: str | None = None
    triples: int | None = None
    triples_by_type: dict[str, int] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    served_at: float | None = None
    note: str | None = None


def new_version_id(kind: str) -> str:
    prefix = "ft" if kind == "fine-tune" else "rx"
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def model_key(location: str) -> str:
    """A model location in one spelling: an existing folder's real path, anything else (a hub name) as it is."""
    try:
        path = Path(location).expanduser()
        return str(path.resolve()) if path.is_dir() else location
    except (OSError, RuntimeError, ValueError):
        return location


def _same_model(a: str, b: str) -> bool:
    """The same model name, or two spellings of one folder."""
    return a == b or model_key(a) == model_key(b)


_NUMBER = (int, float)
# What each field of a stored entry may hold (None where the field is optional); a hand edit that breaks one
# (a created_at in quotes) made start-up fail on a comparison that named neither the registry nor the field.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "version": (str,),
    "kind": (str,),
    "location": (str,),
    "base_model": (str,),
    "status": (str,),
    "created_at": _NUMBER,
    "parent": (str, type(None)),
    "dimension": (int, type(None)),
    "strategy": (str, type(None)),
    "triples": (int, type(None)),
    "triples_by_type": (dict,),
    "train": (dict,),
    "gate": (dict,),
    "served_at": (*_NUMBER, type(None)),
    "note": (str, type(None)),
}


def _check_types(item: dict[str, Any]) -> None:
    for name, value in item.items():
        allowed = _FIELD_TYPES[name]
        if isinstance(value, bool) or not isinstance(value, allowed):
            label = item.get("version") if isinstance(item.get("version"), str) else "?"
            raise TypeError(f"version {label!r}: {name} is {json.dumps(value)[:80]}")
    if item.get("status") not in ("serving", "retired", "rejected", "failed"):
        raise TypeError(f"version {item.get('version')!r}: unknown status {item.get('status')!r}")


class Registry:
    def __init__(self, models_dir: Path) -> None:
        self.dir = models_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = models_dir / "registry.json"
        self._lock = threading.RLock()
        self._versions: dict[str, ModelVersion] = {}
        if self.path.is_file():
            try:
                raw = json.loads(self.path.read_text())
                for item in raw.get("versions", []):
                    known = {k: v for k, v in item.items() if k in ModelVersion.__dataclass_fields__}
                    _check_types(known)
                    self._versions[known["version"]] = ModelVersion(**known)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise RiftError(
                    f"the model registry {self.path} is damaged ({type(exc).__name__}: {exc}); restore it, or move "
                    "it aside to start a new one (rift then serves the configured `model`; fine-tuned weights "
                    "beside it stay on disk)"
                ) from None

    def _save(self) -> None:
        payload = {"versions": [asdict(v) for v in self._versions.values()]}
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload, indent=2))
        os.replace(tmp, self.path)

    # --- queries -------------------------------------------------------------------------------------------

    def get(self, version: str) -> ModelVersion | None:
        with self._lock:
            return self._versions.get(version)

    def all(self) -> list[ModelVersion]:
        with self._lock:
            return sorted(self._versions.values(), key=lambda v: v.created_at)

    def serving(self) -> ModelVersion | None:
        with self._lock:
            for v in self._versions.values():
                if v.status == "serving":
                    return v
        return None

    def location_of(self, entry: ModelVersion) -> str:
        """What to load: fine-tunes live under the models dir and are stored relative to it, so the data dir
        can move."""
        if entry.kind == "fine-tune" and not Path(entry.location).is_absolute():
            return str(self.dir / entry.location)
        return entry.location

    def location_key(self, entry: ModelVersion) -> str:
        """What `entry` loads, in one spelling (model_key): two versions with equal keys share a folder."""
        return model_key(self.location_of(entry))

    def holds(self, location: str | Path) -> bool:
        """Whether `location` lies under the models dir: a folder rift made, and the only kind it deletes."""
        return self.dir.resolve() in Path(location).resolve().parents

    def origin_model(self, entry: ModelVersion) -> str:
        """The model a fine-tune was ultimately trained from: its nearest ancestor that is not a fine-tune (a
        re-index's model, or the configured base); what its query prompt comes from when it saved none."""
        current: ModelVersion | None = entry
        seen: set[str] = set()
        with self._lock:
            while current is not None and current.kind == "fine-tune" and current.version not in seen:
                seen.add(current.version)
                current = self._versions.get(current.parent) if current.parent else None
        if current is None or current.kind == "fine-tune":
            return entry.base_model
        return current.location if current.kind == "reindex" else current.base_model

    def serving_descendant(self, configured_model: str) -> ModelVersion | None:
        """The registry's serving version when it descends from the configured model and its files still exist
        (what to load at start-up); None when the configured model itself should serve. Changes nothing: the
        caller registers the configured model with `serve_base` only once it has loaded, so a model that fails
        to load (a typo in RIFT_MODEL) never retires the version that was serving."""
        with self._lock:
            current = self.serving()
            if current is not None and self._has_weights(current) and self.descends_from(current, configured_model):
                return current
            return None

    def descends_from(self, entry: ModelVersion, configured_model: str) -> bool:
        """Whether `entry` belongs to the lineage of the configured model: made from it, or it is (or descends
        from) a version a `rift reindex` made with that model, which users then name as `model`."""
        if _same_model(entry.base_model, configured_model):
            return True
        current: ModelVersion | None = entry
        seen: set[str] = set()
        with self._lock:
            while current is not None and current.version not in seen:
                seen.add(current.version)
                if current.kind == "reindex" and _same_model(current.location, configured_model):
                    return True
                current = self._versions.get(current.parent) if current.parent else None
        return False

    def serve_base(self, configured_model: str, location: str | None = None) -> ModelVersion:
        """Register the configured model as a base version (once) and make it the serving one. `location`:
        what it loads from (Settings.model_location: not its name once its folder moved), which a rollback to
        it loads too."""
        with self._lock:
            versions = copy.deepcopy(self._versions)
            known = versions.get(configured_model)
            if known is not None and known.kind == "base" and location and known.location != location:
                known.location = location
            if configured_model not in versions:
                versions[configured_model] = ModelVersion(
                    version=configured_model,
                    kind="base",
                    location=location or configured_model,
                    base_model=configured_model,
                    status="serving",
                    created_at=time.time(),
                    served_at=time.time(),
                )
            self._mark_serving(versions, configured_model)
            self._commit(versions)
            return self._versions[configured_model]

    def relocate(self, old: str, new: str) -> list[str]:
        """Point the versions that load the model folder `old` (a base model, a re-index's model) at `new`,
        where the same weights lie now (the folder moved); their names and lineages stay. Fine-tunes need
        none: they are stored relative to the models dir and move with the data dir. The base version named
        `old` is one of them wherever it loaded from (a folder moved twice, or back: its location is no longer
        its name). Returns the versions changed."""
        with self._lock:
            versions = copy.deepcopy(self._versions)
            moved = [
                v
                for v in versions.values()
                if v.kind != "fine-tune"
                and v.location != new
                and (v.location == old or (v.kind == "base" and v.version == old))
            ]
            for entry in moved:
                entry.location = new
            if moved:
                self._commit(versions)
            return [v.version for v in moved]

    def rollback_target(self, version: str | None, configured_model: str | None = None) -> ModelVersion:
        """The named version, or else the most recently retired one of the configured model's lineage (by
        default the serving version's base model), the only one a restart serves."""
        from server.errors import NotFoundError, RiftError

        with self._lock:
            current = self.serving()
            configured = configured_model or (current.base_model if current is not None else None)
            if version is not None:
                target = self._versions.get(version)
                if target is None:
                    known = ", ".join(self._versions) or "none"
                    raise NotFoundError(f"unknown model version {version!r} (versions: {known})")
                if target.status in ("rejected", "failed"):
                    raise RiftError(
                        f"version {version!r} is {target.status}; only a retired version can serve again"
                    )
                if current is not None and target.version == current.version:
                    raise RiftError(f"version {version!r} is already serving")
                if not self._has_weights(target):
                    raise RiftError(
                        f"version {version!r}'s weights were deleted (setting learn_keep_weights keeps those "
                        "of the newest retired fine-tunes); it cannot serve again"
                    )
                if configured is not None and not self.descends_from(target, configured):
                    # Start-up serves only the configured model's lineage: this rollback would not survive it.
                    raise RiftError(
                        f"version {version!r} descends from model {target.base_model!r}, but this server is "
                        f"configured with {configured!r} (setting model), which a restart would serve "
                        f"again; set model to {target.base_model!r}, restart, then roll back"
                    )
                return target
            retired = [
                v
                for v in self._versions.values()
                if v.status == "retired"
                and (configured is None or self.descends_from(v, configured))
                and self._has_weights(v)
            ]
            if not retired:
                raise RiftError("nothing to roll back to: no earlier version has served")
            return max(retired, key=lambda v: v.served_at or v.created_at)

    def newest_served(self, count: int) -> list[ModelVersion]:
        """The `count` versions served most recently (the serving one first, then the newest retired ones):
        those whose vectors stay in Chroma (`learn_keep_versions`), so a rollback to them embeds nothing."""
        with self._lock:
            served = [v for v in self._versions.values() if v.status in ("serving", "retired")]
        served.sort(key=lambda v: v.served_at or v.created_at, reverse=True)
        return served[:count]

    def kept_for_rollback(self, count: int, configured_model: str) -> set[str]:
        """The retired versions among the `count` served most recently that a rollback may return to (their
        weights are there, of the configured model's lineage): their vectors are worth keeping."""
        return {
            v.version
            for v in self.newest_served(count)
            if v.status == "retired" and self._has_weights(v) and self.descends_from(v, configured_model)
        }

    def _has_weights(self, entry: ModelVersion) -> bool:
        """False for a version whose weight folder under the models dir is gone: a fine-tune's, or a re-index's
        to a fine-tune's folder (only rift's own folders are ever deleted)."""
        location = self.location_of(entry)
        if entry.kind != "fine-tune" and not self.holds(location):
            return True
        return Path(location).is_dir()

    # --- changes -------------------------------------------------------------------------------------------

    # Every change is made to a copy, written, and only then kept: a write that fails (a full disk) leaves
    # the registry in memory as it is on disk, not naming a version serving that the next start would not.

    def add(self, entry: ModelVersion) -> ModelVersion:
        with self._lock:
            versions = copy.deepcopy(self._versions)
            versions[entry.version] = entry
            if entry.status == "serving":
                self._mark_serving(versions, entry.version)
            self._commit(versions)
            return self._versions[entry.version]

    def update(self, version: str, **changes: Any) -> ModelVersion:
        with self._lock:
            versions = copy.deepcopy(self._versions)
            entry = versions[version]
            for key, value in changes.items():
                setattr(entry, key, value)
            if changes.get("status") == "serving":
                self._mark_serving(versions, version)
            self._commit(versions)
            return self._versions[version]

    def set_serving(self, version: str) -> None:
        with self._lock:
            versions = copy.deepcopy(self._versions)
            self._mark_serving(versions, version)
            self._commit(versions)

    def _commit(self, versions: dict[str, ModelVersion]) -> None:
        previous, self._versions = self._versions, versions
        try:
            self._save()
        except BaseException:
            self._versions = previous
            raise

    @staticmethod
    def _mark_serving(versions: dict[str, ModelVersion], version: str) -> None:
        now = time.time()
        for v in versions.values():
            if v.version == version:
                v.status = "serving"
                v.served_at = now
            elif v.status == "serving":
                v.status = "retired"
