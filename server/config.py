"""All of rift's settings, in one place.

Precedence (highest first): explicit keyword arguments, environment variables (``RIFT_*``), the TOML file
named by ``RIFT_CONFIG`` (else ``$XDG_CONFIG_HOME/rift/config.toml`` when it exists), then the defaults below.
``configs/rift.toml`` documents every key with its default.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import platformdirs
from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# How `retrain` mines triples (server/learning/mining.py); the CLI and the MCP tool offer the same choices.
LearnStrategy = Literal["fused", "agreement", "keyword_blind", "fused+pseudo", "fused+ict"]
LearnSearches = Literal["new", "all"]
# Where mined hard negatives come from (setting learn_negative_source); the miner and the bench take these.
NegativeSource = Literal["fused", "vector", "keyword", "both"]
# What one retrain may ask for (the `retrain` tool publishes these bounds; `rift bench --learn` checks them too).
RETRAIN_BOUNDS: dict[str, tuple[float, float]] = {
    "epochs": (0.01, 20),
    "learning_rate": (1e-8, 1e-3),
    "batch_size": (2, 4096),
    "min_triples": (1, 10_000_000),
    "merge_base": (0.0, 1.0),
}

DEFAULT_MODEL = "all-MiniLM-L6-v2"
log = logging.getLogger(__name__)


def default_config_file() -> Path | None:
    explicit = os.environ.get("RIFT_CONFIG")
    if explicit:
        named = Path(explicit).expanduser()
        if explicit == os.devnull:
            return None  # "no config file at all", e.g. to keep a user's own file out of a test
        if not named.is_file():
            raise ValueError(f"RIFT_CONFIG names {named}, which is not a file ({os.devnull} means none)")
        return named
    candidate = Path(platformdirs.user_config_dir("rift")) / "config.toml"
    return candidate if candidate.is_file() else None


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings a TOML config file holds. A byte-order mark (Windows PowerShell's "UTF-8" writes one) is not
    TOML, but the file is meant as such."""
    return tomllib.loads(path.read_bytes().decode("utf-8").removeprefix("\ufeff"))


# Environment variables named like settings that are not settings: rift's own, read elsewhere.
_OTHER_ENV = {"RIFT_CONFIG", "RIFT_FUZZ_SCALE"}
_warned_env: set[str] = set()


def _warn_unknown_env(fields: Mapping[str, Any]) -> None:
    """A misspelt RIFT_ variable would otherwise be ignored in silence (RIFT_DATADIR: data in the default place)."""
    known = {f"RIFT_{name.upper()}" for name in fields} | _OTHER_ENV
    for name in sorted(os.environ):
        if name.upper().startswith("RIFT_") and name.upper() not in known and name not in _warned_env:
            _warned_env.add(name)
            near = difflib.get_close_matches(name.upper(), sorted(known), n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            log.warning("ignoring environment variable %s: no such setting%s", name, hint)


def _unset_word(value: str) -> bool:
    """ "none" or "null": an optional setting unset (TOML and the environment have no null)."""
    return value.strip().lower() in ("none", "null")


class _TomlBesideItsFile(TomlConfigSettingsSource):
    """Relative paths in a config file are relative to that file, not to wherever a client starts rift."""

    def __init__(self, settings_cls: type[BaseSettings], toml_file: Path) -> None:
        super().__init__(settings_cls, toml_file=toml_file)
        self._folder = Path(toml_file).expanduser().resolve().parent

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        for key in ("data_dir", "gate_eval_data", "model"):  # "" means unset, as an empty variable does
            if isinstance(data.get(key), str) and not data[key].strip():
                del data[key]
        for key in ("data_dir", "gate_eval_data"):
            # ("none" unsets gate_eval_data, as in the environment: _plain_values reads it, not a path beside
            # the file; found by helper BG)
            if isinstance(data.get(key), str) and not (key == "gate_eval_data" and _unset_word(data[key])):
                data[key] = str(self._beside(data[key]))
        roots = data.get("allowed_roots")
        if isinstance(roots, str):  # one string, separated like PATH, as the environment variable takes it
            roots = [part.strip() for part in roots.split(os.pathsep) if part.strip()]
        if isinstance(roots, list):
            data["allowed_roots"] = [str(self._beside(r)) if isinstance(r, str) else r for r in roots]
        # A model folder beside the config file; anything else (a hub name such as "BAAI/bge-small-en-v1.5",
        # an absolute path) is left as written.
        model = data.get("model")
        if isinstance(model, str) and not Path(model).expanduser().is_absolute():
            beside = self._beside(model)
            if beside.is_dir():
                data["model"] = str(beside)
        return data

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        return read_config_file(Path(file_path))

    def _beside(self, raw: str) -> Path:
        path = Path(raw).expanduser()
        return path if path.is_absolute() else self._folder / path


class Settings(BaseSettings):
    # An empty variable (RIFT_DATA_DIR=) means unset, not "" (which would put the data dir in the cwd).
    model_config = SettingsConfigDict(
        env_prefix="RIFT_", extra="forbid", validate_default=True, env_ignore_empty=True
    )

    # --- storage -------------------------------------------------------------------------------------------
    data_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("rift")),
        description="Where Chroma, the keyword index state, the query log and model versions live.",
    )
    vector_backend: Literal["embedded", "http"] = Field(
        "embedded", description="'embedded' = Chroma PersistentClient in data_dir; 'http' = a Chroma server."
    )
    chroma_host: str = Field("127.0.0.1", description="Chroma server host (vector_backend = 'http').")
    chroma_port: int = Field(8000, ge=1, le=65535, description="Chroma server port.")
    chroma_ssl: bool = Field(False, description="Use HTTPS to reach the Chroma server.")
    chroma_auth_token: str | None = Field(
        None,
        description="The Chroma server's token, sent as chroma_auth_header says (default: 'Authorization: "
        "Bearer <token>').",
    )
    chroma_auth_header: Literal["authorization", "x-chroma-token"] = Field(
        "authorization",
        description="How the token travels: 'Authorization: Bearer <token>', or 'X-Chroma-Token: <token>' "
        "(Chroma Cloud's API keys).",
    )
    chroma_tenant: str = Field("default_tenant", min_length=1, description="Chroma tenant (server mode).")
    chroma_database: str = Field(
        "default_database", min_length=1, description="Chroma database (server mode)."
    )
    chroma_sync_ms: int = Field(
        250,
        ge=0,
        description="With vector_backend='http': how often, at most, a search checks the Chroma server for other "
        "rift processes' writes (every write checks first regardless); 0 = before every search.",
    )
    chroma_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="With vector_backend='http': how long one request may wait for the Chroma server (to "
        "connect, send or answer) before the call fails naming it; Chroma's own client waits forever, so a "
        "server that hangs would hang every tool call.",
    )

    # --- model ---------------------------------------------------------------------------------------------
    model: str = Field(
        DEFAULT_MODEL,
        description="sentence-transformers model: a hub name (needs the hub or its cache) or a local folder "
        "(named by its absolute path, however written). The default is the packaged all-MiniLM-L6-v2 and works "
        "offline.",
    )
    query_prompt: str | None = Field(
        None,
        description="Prefix for queries; None = the model's own 'query' prompt, else a known model's "
        "instruction (bge, also for a local folder or cache snapshot of it); \"\" = none.",
    )
    device: str = Field(
        "auto",
        description="'auto' (a GPU when torch sees one), 'cpu', 'cuda', 'cuda:1', 'mps', 'xpu', ...",
    )
    embed_batch_size: int = Field(32, ge=1, le=4096, description="Chunks per encode batch.")
    embed_backend: Literal["torch", "onnx"] = Field(
        "torch",
        description="Backend for query embedding. 'onnx' runs the model with onnxruntime (exported once from the "
        "local weights into data_dir/models/onnx; needs the onnx package): same vectors to ~1e-7, faster single "
        "queries, and no spinning threads on a busy CPU.",
    )
    document_backend: Literal["torch", "onnx"] = Field(
        "torch",
        description="Backend for encoding documents in batches (ingest, re-embedding). torch encoded batches "
        "of chunks 8% faster than onnxruntime on a 2-core CPU, so 'onnx' for queries pairs with 'torch' here.",
    )

    # --- chunking ------------------------------------------------------------------------------------------
    chunk_tokens: int = Field(
        256,
        ge=16,
        le=8192,
        description="Capped at the model's max sequence length. A change re-chunks (and re-embeds) every "
        "stored document once at the next start.",
    )
    chunk_overlap: int = Field(
        32, ge=0, le=4096, description="Tokens shared by neighbouring chunks (a change re-chunks, too)."
    )
    max_document_chars: int = Field(1_000_000, ge=1, description="Longer documents are rejected.")
    max_documents_per_call: int = Field(
        1000,
        ge=1,
        description="Most documents one add_documents or update_metadata call takes, or one delete_documents call "
        "deletes by filter (by id it takes up to 10,000).",
    )
    # Bounds one call's memory and write-lock time over stdio, where no request-size cap applies (HTTP's is
    # http_max_request_mb); 32 M characters is about that cap's worth of text.
    max_chars_per_call: int = Field(
        32_000_000, ge=1, description="Most characters of text one add_documents call takes, all documents together."
    )

    # --- files (add_paths / rift add / rift watch) ------------------------------------------------------------
    allowed_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Folders the MCP tools may read files under; empty = add_paths refuses every path. "
        "The CLI (rift add, rift watch) may read whatever its user can.",
    )
    max_file_bytes: int = Field(10_000_000, ge=1, description="Larger files are skipped with a reason.")
    min_free_disk_mb: int = Field(
        64,
        ge=0,
        description="A write is refused while the disk holding data_dir has less free space than this (MB; 0: "
        "never): an embedded Chroma that fills its disk keeps failing until rift restarts. Deletes are not refused.",
    )

    # --- retrieval -----------------------------------------------------------------------------------------
    # depth 200 and k 20 were picked on SciFact test and NFCorpus dev only (README "Benchmarks"): depth 200 also
    # lifts Chroma's HNSW ef to 200, which makes the vector side effectively exact at these sizes.
    candidate_depth: int = Field(200, ge=1, le=10_000, description="Candidates taken from each retriever.")
    rrf_k: float = Field(
        20.0,
        gt=0,
        allow_inf_nan=False,
        description="RRF constant: score = sum w / (rrf_k + rank). Tuned (README).",
    )
    exact_search_max_chunks: int = Field(
        40_000,
        ge=0,
        description="Collections up to this many chunks keep their vectors and chunk texts in memory too and are "
        'searched exactly with numpy (faster than Chroma\'s HNSW at that size; README "Benchmarks"); 0 = always '
        "Chroma. Not used with a Chroma server.",
    )
    vector_weight: float = Field(1.0, ge=0, allow_inf_nan=False, description="RRF weight of the vector list.")
    keyword_weight: float = Field(
        1.0, ge=0, allow_inf_nan=False, description="RRF weight of the keyword list."
    )
    max_k: int = Field(
        100, ge=10, le=10_000, description="Largest k a search may ask for (at least 10, the default k)."
    )
    search_max_chars: int = Field(
        0,
        ge=0,
        description="hybrid_search's max_chars when a call gives none: each hit's text at most this long, the "
        "part of its chunk with the most query words (about half the context at 300); 0 = whole chunks.",
    )
    get_document_max_chars: int = Field(
        100_000,
        ge=0,
        description="get_document's max_chars when a call gives none: a longer document comes back a window at a "
        "time (truncated: true; call again with a later offset), so one long PDF does not fill an agent's "
        "context; 0 = whole documents.",
    )
    stemmer_language: str | None = Field(
        "english", description='PyStemmer language; "none" (or "" in a config file) disables stemming.'
    )
    stopwords: str | None = Field(
        "en_questions",
        description='Stopword list: rift\'s "en_questions" (bm25s\' "en" plus question words, auxiliaries and '
        'pronouns; measured in the README) or a bm25s list ("en", "de", ...); "none" (or "" in a config file) '
        "keeps every token.",
    )

    # --- learning log --------------------------------------------------------------------------------------
    log_queries: bool = Field(True, description="Record every hybrid search in the disagreement log.")
    # Bounds the log's disk (a search's record is tens of KB: both candidate lists; a lower limit shrinks the
    # file at the next start, see QueryLog._reclaim) and what each retrain mines.
    log_max_queries: int = Field(
        20_000,
        ge=0,
        description="Most searches the disagreement log keeps (pruned once 2 % over); the oldest go first, those "
        "with feedback last while they fill at most half of it. 0 keeps every search.",
    )
    blind_spot_depth: int = Field(5, ge=1, le=100, description="Top-n of each side compared for blind spots.")

    # --- learning from use (server/learning/; README "Learning from use") ---------------------------------
    learn_strategy: LearnStrategy = Field(
        "fused", description="How triples are mined from the log; 'fused' was best measured (README)."
    )
    learn_searches: LearnSearches = Field(
        "new",
        description="Which logged searches a retrain mines: 'new' = those the serving fine-tune has not trained "
        "on (searched after its own retrain's training part, or judged or fetched since), so each retrain adds "
        "what use added (measured better than 'all', README); 'all' = the whole log again.",
    )
    learn_epochs: float = Field(
        3.0, gt=0, le=20, description="Training epochs per retrain (3 with margin-filtered triples: README)."
    )
    learn_learning_rate: float = Field(2e-5, gt=0, le=1e-3, description="Training learning rate.")
    learn_batch_size: int = Field(32, ge=2, le=4096, description="Training batch size (in-batch negatives).")
    learn_merge_base: float = Field(
        0.0,
        ge=0,
        le=1,
        description="WiSE-FT: after training, move every weight back towards the serving model's by this share "
        "(0 = keep the trained weights); lets a higher learning rate learn more and forget less (README).",
    )
    learn_loss: Literal["mnrl", "cached_mnrl"] = Field(
        "mnrl", description="cached_mnrl: large batches, small memory."
    )
    learn_max_seq_length: int = Field(128, ge=16, le=8192, description="Training-time token cap (speed).")
    learn_negatives_per_query: int = Field(2, ge=1, le=10, description="Hard negatives mined per query.")
    learn_negative_source: NegativeSource = Field(
        "fused",
        description="Where hard negatives come from: 'fused' = the documents fusion ranked right after the "
        "positive (measured best for the hybrid, README); 'vector' / 'keyword' = that side's blind spots; "
        "'both' alternates them.",
    )
    learn_positive_min_keyword_margin: float = Field(
        1.3,
        ge=0,
        le=100,
        description="A mined positive must also be BM25's first document with at least this many times the "
        "next one's score (0 = off): cleaner, fewer triples (README).",
    )
    learn_min_triples: int = Field(32, ge=1, description="A retrain with fewer mined triples is refused.")
    learn_keep_versions: int = Field(
        2, ge=1, le=20, description="Versions whose vectors stay in Chroma, so rollback to them is instant."
    )
    learn_keep_weights: int = Field(
        5,
        ge=1,
        le=1000,
        description="Retired fine-tunes whose weights stay on disk for rollback (about 90 MB each for MiniLM); "
        "an older one's weight folder is deleted after a swap or rollback and at start-up (never one whose "
        "vectors are kept, that the configured model names or that a version serves).",
    )
    learn_keep_rejected: int = Field(
        1,
        ge=0,
        le=1000,
        description="Rejected or failed fine-tunes whose weights stay on disk to inspect (about 90 MB each for "
        "MiniLM; they never serve); an older one's weight folder is deleted after each rejection, swap or rollback "
        "and at start-up. Their registry entries and gate numbers stay.",
    )
    learn_resume_interrupted: bool = Field(
        True,
        description="A retrain stopped by a shutdown or a crash continues from its last checkpoint when the "
        "server next starts (if the model it started from still serves); false drops it.",
    )
    learn_auto_after_queries: int | None = Field(
        None,
        ge=1,
        description="Periodic retrain: after this many new logged queries since the last retrain or skip, pruned "
        "ones included (may exceed log_max_queries; None = off).",
    )
    learn_auto_interval_hours: float | None = Field(
        None, gt=0, description="Periodic retrain: every this many hours when there are new logged queries and enough "
        "triples (None = off); with learn_auto_after_queries set too, either starts one."
    )
    gate_holdout_fraction: float = Field(0.2, gt=0, lt=1, description="Most recent logged queries held out.")
    gate_tolerance: float = Field(
        0.01, ge=0, le=1, description="Largest drop allowed in a label-free signal when no labels decide."
    )
    gate_guard_tolerance: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Largest drop allowed in a label-free signal when labels decide (gate_eval_data, or "
        "enough held-out feedback): the proxies then only guard against a collapsed model.",
    )
    gate_eval_data: Path | None = Field(None, description="A BEIR-format folder the gate also scores on.")
    gate_eval_split: str = Field("test", description="qrels/<split>.tsv of gate_eval_data.")
    gate_eval_collection: str = Field(
        "default", description="The collection holding gate_eval_data's corpus."
    )

    # --- HTTP transport ------------------------------------------------------------------------------------
    http_host: str = Field("127.0.0.1", description="Bind address of the streamable-HTTP transport.")
    http_port: int = Field(8765, ge=1, le=65535, description="Port of the streamable-HTTP transport.")
    http_token: str | None = Field(None, description="Bearer token; required when binding beyond loopback.")
    http_max_request_mb: int = Field(
        32,
        ge=1,
        le=4096,
        description="Largest HTTP request body in MiB; a larger one gets 413 (split the add).",
    )

    @field_validator("search_max_chars", mode="after")
    @classmethod
    def _snippet(cls, value: int) -> int:
        if 0 < value < 20:  # (server.service.MIN_SNIPPET_CHARS)
            raise ValueError("must be 0 (whole chunks) or at least 20")
        return value

    @field_validator("http_token", mode="after")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        # HTTP strips a header value's surrounding whitespace, so such a token could never match.
        if value is not None and (value != value.strip() or any(c.isspace() for c in value)):
            raise ValueError("the bearer token must not contain whitespace")
        # Clients send header bytes as Latin-1 (Node) or refuse anything else (httpx): another token never matches.
        if value is not None and not all("!" <= c <= "~" for c in value):
            raise ValueError("the bearer token must be printable ASCII (letters, digits, punctuation)")
        return value

    @field_validator("data_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        resolved = value.expanduser().resolve()  # (checked whole: a relative path, ~ or a link adds parts too)
        try:
            str(resolved).encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8 (a lone surrogate): refused before any file is made
            shown = os.fsencode(resolved).decode("utf-8", "backslashreplace")
            raise ValueError(
                f"{shown} is not valid UTF-8 (Chroma needs a text path); rename it or choose another folder"
            ) from None
        return resolved

    @field_validator("device", mode="after")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|(cuda|xpu|npu|hpu|mtia)(:\d+)?", value):
            raise ValueError(f"must be 'auto', 'cpu', 'mps', or a GPU such as 'cuda' or 'cuda:1' (got {value!r})")
        return value

    @field_validator("model", mode="after")
    @classmethod
    def _model_folder(cls, value: str) -> str:
        # A local folder is named by its absolute path, so "m", "./m/" and "/home/me/m" are one model (the
        # name labels the stored vectors) wherever rift is started from. Hub names stay as written.
        from server.engine.models import PACKAGED_ALIASES

        folder = Path(value.strip()).expanduser()
        if value.strip().lower() in PACKAGED_ALIASES or not value.strip() or not folder.is_dir():
            return value
        return str(folder.resolve())

    @field_validator("gate_eval_data", mode="after")
    @classmethod
    def _expand_eval(cls, value: Path | None) -> Path | None:
        # Absolute now, as data_dir is: a server reads it at retrain time, from wherever it was started.
        return value.expanduser().resolve() if value is not None else None

    @field_validator("*", mode="before")
    @classmethod
    def _plain_values(cls, value: Any, info: ValidationInfo) -> Any:
        """Environment variables and TOML have no null: "none" or "null" unsets an optional setting (so the
        environment can switch off what a config file turned on). A boolean is not a number (pydantic's lax
        mode read `embed_batch_size = true` as 1), and a blank path or model names nothing."""
        field = cls.model_fields[info.field_name]
        kinds = set(get_args(field.annotation)) or {field.annotation}
        if isinstance(value, str) and type(None) in kinds and _unset_word(value):
            return None
        if isinstance(value, bool) and kinds & {int, float} and bool not in kinds:
            raise ValueError(f"must be a number, not {str(value).lower()}")
        names_something = Path in kinds or info.field_name == "model"
        if isinstance(value, str) and not value.strip() and names_something:
            raise ValueError("must not be blank")
        return value

    @field_validator("stemmer_language", "stopwords", mode="before")
    @classmethod
    def _none_from_text(cls, value: object) -> object:
        # TOML has no null and an empty variable means unset: "" (in TOML) or "none" turns these off.
        if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
            return None
        return value

    @field_validator("stemmer_language", mode="after")
    @classmethod
    def _known_stemmer(cls, value: str | None) -> str | None:
        import Stemmer

        if value is not None and value not in Stemmer.algorithms():
            raise ValueError(f"unknown stemmer {value!r}; PyStemmer has {', '.join(Stemmer.algorithms())}")
        return value

    @field_validator("stopwords", mode="after")
    @classmethod
    def _known_stopwords(cls, value: str | None) -> str | None:
        import bm25s

        from server.engine.keyword_index import RIFT_STOPWORDS

        if value in RIFT_STOPWORDS:
            return value
        try:
            bm25s.tokenize(["a"], stopwords=value, show_progress=False)
        except Exception:
            raise ValueError(
                f"unknown stopword list {value!r}; rift has {', '.join(RIFT_STOPWORDS)}, bm25s e.g. en, de, fr, "
                "es, it, pt, nl, sv, ru, zh"
            ) from None
        return value

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _roots_from_text(cls, value: object) -> object:
        """From the environment: a JSON list, or plain paths separated like PATH (':' here, ';' on Windows)."""
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("["):
            return json.loads(value)
        return [part.strip() for part in value.split(os.pathsep) if part.strip()]

    @field_validator("allowed_roots", mode="after")
    @classmethod
    def _expand_roots(cls, value: list[Path]) -> list[Path]:
        return [p.expanduser().resolve() for p in value]

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError("chunk_overlap must be smaller than chunk_tokens")
        if self.vector_weight == 0 and self.keyword_weight == 0:
            raise ValueError(
                "vector_weight and keyword_weight cannot both be 0: hybrid search would rank nothing"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        _warn_unknown_env(settings_cls.model_fields)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = default_config_file()
        if toml_file is not None:
            try:
                sources.append(_TomlBesideItsFile(settings_cls, toml_file=toml_file))
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"config file {toml_file} is not valid TOML: {exc}") from None
            except UnicodeDecodeError as exc:
                raise ValueError(f"config file {toml_file} is not UTF-8 text: {exc.reason}") from None
            except OSError as exc:
                raise ValueError(f"config file {toml_file} cannot be read: {exc.strerror or exc}") from None
        return tuple(sources)

    # Where `model` loads from when start-up found the configured folder's weights recorded under the path
    # it had before it moved (Rift._adopt_stored_name): `model` then keeps that earlier path, which names the
    # stored vectors and the versions trained from it.
    _moved_model_folder: str | None = PrivateAttr(None)

    @property
    def model_location(self) -> str:
        """What `model` loads: the folder or hub name `model` names, or the folder it moved to."""
        return self._moved_model_folder or self.model

    @model_location.setter
    def model_location(self, folder: str) -> None:
        self._moved_model_folder = folder

    # Derived paths: one layout, named here only.
    @property
    def chroma_dir(self) -> Path:
        return self.data_dir / "chroma"

    @property
    def state_db(self) -> Path:
        return self.data_dir / "state.sqlite"

    @property
    def log_db(self) -> Path:
        return self.data_dir / "querylog.sqlite"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def lock_file(self) -> Path:
        return self.data_dir / "rift.lock"
