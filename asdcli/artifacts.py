"""The one place that writes and reads artifacts: atomic writes, npz/JSON loading with clear
errors, checkpoint hashing, and the embeddings file that every stage after `embed` reads."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import secrets
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from asdcli import __version__
from asdcli.errors import ArtifactError, ArtifactNotFound, AsdError, ConfigError

EMBEDDINGS_SCHEMA = 2  # 2: meta["frontend"] holds the front-end spec (frontend/spec.py)
CACHE_ENV = "ASD_CACHE_DIR"


NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems
_TEMP_SUFFIX = ".tmp"


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` runs on this machine (always True where that cannot be asked)."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def shortened(name: str, room: int) -> str:
    """``name`` cut (in UTF-8 bytes, never mid-character) so that ``room`` more bytes fit in NAME_MAX:
    for the names of temp files and folders derived from an artifact's name."""
    raw = name.encode("utf-8", "surrogateescape")
    budget = max(NAME_MAX - room, 1)
    if len(raw) <= budget:
        return name
    return raw[:budget].decode("utf-8", "ignore") or name[:1]


def temp_dir_prefix(name: str) -> str:
    """The ``prefix`` for a ``tempfile`` folder beside the artifact ``name``: ``.<name>.``, shortened
    so that tempfile's 8 random characters and a suffix of up to 4 (``.tmp``) fit in NAME_MAX."""
    return f".{shortened(name, len('..') + 8 + 4)}."


def make_temp_dir(parent: Path, name: str, suffix: str) -> Path:
    """Create a new folder ``parent/.<name>.<hex8><suffix>`` (suffix of up to 4 characters) with
    mode 0o777 less the umask, as ``mkdir`` gives: not ``tempfile.mkdtemp``, whose 0o700 a folder
    renamed into place would keep (a submission folder no one else could read)."""
    prefix = temp_dir_prefix(name)
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            path.mkdir(mode=0o777)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"No free temp folder name for {name}")


def _temp_stem(name: str, pid: str) -> str:
    """The part of ``name`` in its temp name ``.<stem>.<pid>-<hex8>.tmp`` (at most NAME_MAX bytes)."""
    return shortened(name, len(f"..{pid}-{'0' * 8}{_TEMP_SUFFIX}"))


def check_name_length(path: Path) -> None:
    """An AsdError when the last part of ``path`` is longer than a file name may be."""
    size = len(path.name.encode("utf-8", "surrogateescape"))
    if size > NAME_MAX:
        raise AsdError(
            f"Cannot write {path}: its name is {size} bytes long, more than the {NAME_MAX} a file "
            "system allows. Choose a shorter output name."
        )


def _create_temp(parent: Path, name: str) -> tuple[int, Path]:
    """Create ``parent/.name.<pid>-<random>.tmp`` exclusively with mode 0o666 less the umask.

    Not ``tempfile.mkstemp``: its files are 0o600, and the rename would hand that mode to the
    artifact. Letting the kernel apply the umask gives the mode ``open(path, "w")`` would. The
    pid says whether the writer still runs (see :func:`_remove_stale_temps`); a long ``name`` is
    shortened so that the temp name is never longer than the artifact's allows.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    pid = str(os.getpid())
    prefix = f".{_temp_stem(name, pid)}.{pid}-"
    for _ in range(100):
        tmp = parent / f"{prefix}{secrets.token_hex(4)}{_TEMP_SUFFIX}"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"No free temp file name for {name}")


def is_stale_temp(temp: str, name: str) -> bool:
    """True for a temp file of artifact ``name`` whose writer no longer runs (killed before its
    rename); one of the pid-less form ``.<name>.<hex8>.tmp`` of earlier asdcli versions is always stale."""
    if not (temp.startswith(".") and temp.endswith(_TEMP_SUFFIX)):
        return False
    stem, _, tag = temp[1 : -len(_TEMP_SUFFIX)].rpartition(".")
    pid, _, token = tag.rpartition("-")
    if len(token) != 8 or any(c not in "0123456789abcdef" for c in token):
        return False
    if not pid:
        return stem == name
    return (pid.isdigit() and stem == _temp_stem(name, pid) and int(pid) != os.getpid()
            and not pid_alive(int(pid)))  # fmt: skip


def _remove_stale_temps(path: Path) -> None:
    """Remove the temp files of ``path`` left by killed writers (``kill -9`` before the rename).
    A temp that cannot be removed (still open on Windows) is left alone."""
    with contextlib.suppress(OSError), os.scandir(path.parent) as entries:
        for entry in entries:
            if is_stale_temp(entry.name, path.name):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def check_writable_folder(folder: str | Path) -> None:
    """AsdError before any work when ``folder`` (or, while it does not exist, the nearest folder
    above it, where it would be created) cannot be written in; root passes, as its writes would."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise AsdError(f"Cannot write in {existing}: no write permission. Choose a writable output path.")


def through_link(path: Path) -> Path:
    """The path an output is written at: a symlink's target, so the user's link stays a link
    (writing the temp file beside the link and renaming it over would replace the link)."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[BinaryIO]:
    """Open a temp file beside ``path``; on success fsync and rename it over ``path``.

    On any exception (Ctrl-C included) the temp file is removed and ``path`` is untouched,
    so an existing artifact is never replaced by a partial one. A ``path`` that is a symlink is
    written through: its target is replaced, the user's link stays a link.
    """
    path = Path(path)
    check_name_length(path)
    path = through_link(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AsdError(f"Cannot create folder {parent}: {e.strerror}. Choose a writable output path.") from e
    try:
        fd, tmp = _create_temp(parent, path.name)
    except OSError as e:
        raise AsdError(f"Cannot write in {parent}: {e.strerror}. Choose a writable output path.") from e
    try:
        with os.fdopen(fd, mode) as f:
            yield f  # type: ignore[misc]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # disk full, --out is a folder, ...
        tmp.unlink(missing_ok=True)
        raise AsdError(f"Cannot write {path}: {e.strerror or e}. Choose another output path.") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _remove_stale_temps(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """UTF-8; file names that are not UTF-8 (decoded with surrogateescape) keep their bytes."""
    write_bytes_atomic(path, text.encode("utf-8", errors="surrogateescape"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_npz_atomic(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write an uncompressed npz atomically. String arrays must be unicode (``<U``), not objects."""
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **{k: np.asarray(v) for k, v in arrays.items()})
    write_bytes_atomic(path, buf.getvalue())


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def load_npz(path: str | Path, required: tuple[str, ...] = (), what: str = "artifact") -> dict[str, np.ndarray]:
    """Load an npz without pickles; a missing, corrupt or incomplete file, a folder or a bare
    ``.npy`` array is a clear error."""
    path = Path(path)
    if path.is_dir():
        raise ArtifactNotFound(f"{what.capitalize()} {path} is a folder; pass the .npz file itself.")
    if not path.is_file():
        raise ArtifactNotFound(f"{what.capitalize()} {path} does not exist.")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a .npy file loads as one bare array
            raise ArtifactError(
                f"{path} is a single .npy array, not {_a(what)} (.npz); pass the .npz file that asdcli wrote."
            )
        with loaded as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        # numpy reads any other bytes as a pickle, and its message suggests loading it unsafely
        why = "not an npz archive, and asdcli never unpickles" if "pickle" in str(e) else str(e)
        raise ArtifactError(f"{path} is not a readable .npz {what} ({why}). Re-create it.") from e
    missing = [k for k in required if k not in arrays]
    if missing:
        raise ArtifactError(f"{path} is not {_a(what)}: it lacks {', '.join(missing)}.")
    return arrays


def read_json(path: str | Path, what: str = "file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise ArtifactNotFound(f"{what.capitalize()} {path} does not exist.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({e}). Re-create it.") from e


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    """asdcli's user cache: ``$ASD_CACHE_DIR``, else ``$XDG_CACHE_HOME/asdcli``, else ~/.cache/asdcli."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser()
    return Path(base) / "asdcli"


def file_key(path: Path) -> dict[str, Any]:
    """What identifies a file's version without reading it: real path, size, mtime_ns, inode, device."""
    st = path.stat()
    return {"path": os.fsdecode(os.path.realpath(path)), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "inode": st.st_ino, "device": st.st_dev}  # fmt: skip


def cached_sha256(path: str | Path) -> str:
    """:func:`sha256_file`, remembered in the user cache under (path, size, mtime_ns, inode).

    Any change of the file changes the key, so a stale hash is never used; the hash is stored
    only when the file did not change while it was read. A cache that cannot be read or written
    is ignored (the file is hashed).
    """
    path = Path(path)
    key = file_key(path)
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    entry = cache_dir() / "sha256" / f"{name}.json"
    with contextlib.suppress(OSError, ValueError, UnicodeDecodeError):
        stored = json.loads(entry.read_text(encoding="utf-8"))
        if isinstance(stored, dict) and stored.get("key") == key and isinstance(stored.get("sha256"), str):
            return str(stored["sha256"])
    digest = sha256_file(path)
    if file_key(path) == key:
        with contextlib.suppress(OSError, AsdError):
            write_json_atomic(entry, {"key": key, "sha256": digest})
    return digest


def check_not_input(out: str | Path | None, inputs: Iterable[str | Path], option: str) -> None:
    """ConfigError when the output ``out`` is one of ``inputs`` (writing it would destroy an input)."""
    if out is None:
        return
    out = Path(out)
    check_name_length(out)  # before any look-up of it (ENAMETOOLONG)
    for raw in inputs:
        inp = Path(raw)
        same = os.path.samefile(out, inp) if out.exists() and inp.exists() else out.resolve() == inp.resolve()
        if same:
            raise ConfigError(f"{option} {out} is one of the inputs; choose another output path.")


def json_meta(arrays: Mapping[str, np.ndarray], path: str | Path) -> dict[str, Any]:
    """Decode the ``meta`` JSON object stored in an npz artifact."""
    try:
        meta = json.loads(str(arrays["meta"]))
    except (KeyError, ValueError) as e:
        raise ArtifactError(f"{path} has no valid meta record. Re-create it.") from e
    if not isinstance(meta, dict):
        raise ArtifactError(
            f"{path} has a malformed meta record (a JSON {type(meta).__name__}, not an object); re-create it."
        )
    return meta


@dataclass(frozen=True)
class Embeddings:
    """Embeddings of N clips with the parsed DCASE fields of each clip.

    ``vectors`` is float32 (N, D); every string field is a unicode array of shape (N,), with ""
    where the field is unknown. ``meta`` records how the vectors were made (schema version,
    checkpoint SHA-256, backbone cfg, adapter id, pooling, clip length, tool version).
    """

    vectors: np.ndarray
    filenames: np.ndarray
    paths: np.ndarray
    machine: np.ndarray
    section: np.ndarray
    domain: np.ndarray
    split: np.ndarray
    label: np.ndarray
    meta: dict[str, Any]

    FIELDS = ("filenames", "paths", "machine", "section", "domain", "split", "label")

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def select(self, mask: np.ndarray) -> Embeddings:
        """The subset of rows where the boolean ``mask`` (N,) is True."""
        fields = {f: getattr(self, f)[mask] for f in self.FIELDS}
        return Embeddings(vectors=self.vectors[mask], meta=self.meta, **fields)

    @staticmethod
    def concat(parts: Sequence[Embeddings]) -> Embeddings:
        """The rows of ``parts`` in order (the meta of the first; parts of one embedding job)."""
        fields = {f: np.concatenate([getattr(p, f) for p in parts]) for f in Embeddings.FIELDS}
        return Embeddings(vectors=np.concatenate([p.vectors for p in parts]), meta=parts[0].meta, **fields)


def save_embeddings(path: str | Path, emb: Embeddings, extra: Mapping[str, np.ndarray] | None = None) -> None:
    """Write ``emb`` atomically; ``extra`` arrays (e.g. window times) are stored beside the fields."""
    meta = {"schema_version": EMBEDDINGS_SCHEMA, "tool_version": __version__, **emb.meta}
    arrays: dict[str, np.ndarray] = {"embeddings": np.asarray(emb.vectors, dtype=np.float32)}
    for f in Embeddings.FIELDS:
        arrays[f] = np.asarray(getattr(emb, f), dtype=str)
    arrays["meta"] = np.asarray(json.dumps(meta))
    save_npz_atomic(path, {**(extra or {}), **arrays})


def load_embeddings(path: str | Path) -> Embeddings:
    """Read an embeddings file; wrong schema, non-numeric, 0-column or non-finite vectors are ArtifactError."""
    arrays = load_npz(path, ("embeddings", "filenames", "meta"), what="embeddings file")
    meta = json_meta(arrays, path)
    if meta.get("schema_version") != EMBEDDINGS_SCHEMA:
        raise ArtifactError(
            f"{path} has embeddings schema {meta.get('schema_version')!r}, this asdcli reads "
            f"{EMBEDDINGS_SCHEMA}; re-create it with `asd embed`."
        )
    raw = arrays["embeddings"]
    if raw.dtype.kind not in "fiu" or raw.ndim != 2 or raw.shape[1] == 0:
        raise ArtifactError(
            f"{path}: embeddings must be a numeric 2-D array with at least one column, "
            f"got {raw.dtype} of shape {raw.shape}; re-create it with `asd embed`."
        )
    with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32 range become Inf: refused below
        vectors = np.asarray(raw, dtype=np.float32)
    n = vectors.shape[0]
    fields = {}
    for f in Embeddings.FIELDS:
        col = arrays.get(f, np.full(n, "", dtype=str))
        if col.shape != (n,):
            raise ArtifactError(f"{path}: field {f} has shape {col.shape}, expected ({n},).")
        fields[f] = col.astype(str)
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        first = fields["paths"][bad][0] or fields["filenames"][bad][0]
        raise ArtifactError(
            f"{path} holds NaN or Inf embeddings ({int(bad.sum())} rows, first {first}); re-create it with `asd embed`."
        )
    return Embeddings(vectors=vectors, meta=meta, **fields)
