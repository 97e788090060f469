"""Which files rift reads, and what it calls them. `file_type` is stored in each document's metadata (filterable)
and picks the extractor and the structure-aware splitter."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Family = Literal["markdown", "rst", "html", "pdf", "text", "code"]

CODE_EXTENSIONS: dict[str, str] = {
    ".py": "python", ".pyi": "python", ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript",
    ".jsx": "javascript", ".ts": "typescript", ".tsx": "typescript", ".go": "go", ".rs": "rust",
    ".java": "java", ".kt": "kotlin", ".kts": "kotlin", ".scala": "scala", ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp", ".cs": "csharp", ".rb": "ruby",
    ".php": "php", ".swift": "swift", ".sh": "shell", ".bash": "shell", ".zsh": "shell", ".sql": "sql",
    ".r": "r", ".lua": "lua", ".pl": "perl", ".jl": "julia", ".ex": "elixir", ".exs": "elixir",
    ".erl": "erlang", ".hs": "haskell", ".ml": "ocaml", ".clj": "clojure", ".dart": "dart", ".vue": "vue",
    ".svelte": "svelte", ".css": "css", ".scss": "css", ".proto": "protobuf", ".tf": "terraform",
}  # fmt: skip
TEXT_EXTENSIONS: dict[str, str] = {
    ".txt": "text", ".text": "text", ".org": "org", ".adoc": "asciidoc", ".asciidoc": "asciidoc",
    ".tex": "latex", ".csv": "csv", ".tsv": "csv", ".json": "json", ".yaml": "yaml", ".yml": "yaml",
    ".toml": "toml", ".ini": "ini", ".cfg": "ini", ".conf": "ini", ".xml": "xml",
}  # fmt: skip
DOCUMENT_EXTENSIONS: dict[str, tuple[str, Family]] = {
    ".md": ("markdown", "markdown"), ".markdown": ("markdown", "markdown"), ".mdx": ("markdown", "markdown"),
    ".rst": ("rst", "rst"), ".html": ("html", "html"), ".htm": ("html", "html"), ".xhtml": ("html", "html"),
    ".pdf": ("pdf", "pdf"),
}  # fmt: skip
# Extension-less files that are text by convention.
KNOWN_NAMES: dict[str, tuple[str, Family]] = {
    "readme": ("text", "text"), "license": ("text", "text"), "copying": ("text", "text"),
    "notice": ("text", "text"), "authors": ("text", "text"), "changelog": ("text", "text"),
    "contributing": ("text", "text"), "makefile": ("make", "code"), "dockerfile": ("dockerfile", "code"),
}  # fmt: skip

CODE_TYPES = frozenset(CODE_EXTENSIONS.values()) | {"make", "dockerfile"}


def classify(path: Path) -> tuple[str, Family] | None:
    """(file_type, family) for a file rift can read, else None."""
    ext = path.suffix.lower()
    if ext in DOCUMENT_EXTENSIONS:
        return DOCUMENT_EXTENSIONS[ext]
    if ext in CODE_EXTENSIONS:
        return CODE_EXTENSIONS[ext], "code"
    if ext in TEXT_EXTENSIONS:
        return TEXT_EXTENSIONS[ext], "text"
    return KNOWN_NAMES.get(path.name.lower()) if not ext else None
