"""DCASE dataset layouts: find the audio clips under the given folders, and count them per machine.

With :mod:`asdcli.data.names` (file names), the only module that knows DCASE conventions.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from asdcli.data.names import AUDIO_SUFFIXES, OTHER_AUDIO_SUFFIXES, SPLITS, Clip, make_clip
from asdcli.errors import ConfigError, DataError

# root/dev_data/raw/<machine>/train is three levels below the root; one more for slack.
_MAX_DEPTH = 4

EXPECTED_LAYOUT = (
    "expected DATA/<machine>/{train,test,supplemental}/*.wav, the official "
    "ROOT/dev_data/raw/<machine>/... or ROOT/eval_data/raw/<machine>/..., a machine folder, "
    "a split folder, or .wav files"
)


def _is_audio(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_SUFFIXES and not path.name.startswith(".")


def _check_link(path: Path) -> None:
    """DataError for an audio-named path that is a dangling or looping symlink (or not a file)."""
    try:
        target = path.resolve(strict=True)
    except FileNotFoundError as e:
        raise DataError(
            f"{path} is a symlink to {os.readlink(path)}, which does not exist; fix the link or remove it."
        ) from e
    except RuntimeError as e:  # Python < 3.13: a symlink loop
        raise DataError(f"{path} is a symlink loop; fix the link or remove it.") from e
    except OSError as e:  # ELOOP on Python >= 3.13, permissions, ...
        raise DataError(f"Cannot open {path}: {e.strerror or e}; fix the link or its permissions, or remove it.") from e
    if not target.is_file():
        raise DataError(f"{path} is not an audio file (it is a folder or device); rename or remove it.")


def _audio_files(folder: Path) -> list[Path]:
    """The audio files of ``folder``; an audio-named entry that is not a readable file is a DataError."""
    try:
        names = sorted(folder.iterdir())
    except OSError as e:
        raise DataError(f"Cannot list {folder}: {e.strerror}; check its permissions.") from e
    other = [p for p in names if p.suffix.lower() in OTHER_AUDIO_SUFFIXES and not p.name.startswith(".")]
    if other:
        raise DataError(
            f"{other[0]} is {other[0].suffix} audio ({len(other)} such file(s) in {folder}), which asdcli does not "
            f"read (it reads {' and '.join(AUDIO_SUFFIXES)} files); convert them to WAV or FLAC, or move them out."
        )
    entries = [p for p in names if _is_audio(p)]
    for p in entries:
        if p.is_symlink() or not p.is_file():
            _check_link(p)
    return entries


def _has_split_dir(folder: Path) -> bool:
    return any((folder / s).is_dir() for s in SPLITS)


def _listed(folder: Path) -> list[Path]:
    """The entries of ``folder`` not hidden, sorted; [] when it cannot be listed (listing it to
    read its clips reports that)."""
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError:
        return []


def _refuse_loose_audio(machine_dir: Path) -> None:
    """DataError when audio files lie directly in a machine folder, beside its split folders,
    where the DCASE layout reads none: they would silently go missing from every output."""
    loose = [p for p in _listed(machine_dir) if _is_audio(p) and p.is_file()]
    if loose:
        raise DataError(
            f"{machine_dir} holds {len(loose)} audio file(s) beside its {'/'.join(SPLITS)} folders (e.g. {loose[0].name}), "
            "which asdcli does not read; move them into the split folder they belong to, or out of the dataset."
        )


def _refuse_nested_audio(split_dir: Path) -> None:
    """DataError when audio files lie in a sub-folder of a split folder (``test/normal/*.wav``),
    where the DCASE layout reads none: they would silently go missing from every output."""
    for sub in (p for p in _listed(split_dir) if p.is_dir()):
        nested = next((Path(d) / f for d, _, files in os.walk(sub) for f in sorted(files) if _is_audio(Path(f))), None)
        if nested is not None:
            raise DataError(
                f"{sub} holds audio files (e.g. {nested.name}) in a sub-folder of {split_dir}, which asdcli does not "
                f"read (a split keeps its clips directly in it); move them into {split_dir}, or out of the dataset."
            )


def _split_files(split_dir: Path) -> list[Path]:
    """The clips of a split folder; audio in its sub-folders is a DataError (_refuse_nested_audio)."""
    files = _audio_files(split_dir)
    _refuse_nested_audio(split_dir)
    return files


def _machine_clips(machine_dir: Path) -> list[Clip]:
    _refuse_loose_audio(machine_dir)
    clips = []
    for split in SPLITS:
        split_dir = machine_dir / split
        if split_dir.is_dir():
            clips += [make_clip(p, machine_dir.name, split) for p in _split_files(split_dir)]
    return clips


def _find_machine_dirs(root: Path) -> tuple[list[Path], list[Path]]:
    """Folders below ``root`` (depth <= 4) that contain a train/test/supplemental folder, and the
    audio files found outside them (in ``root`` itself or in folders that are not machine folders)."""
    found: list[Path] = []
    outside: list[Path] = []

    def unreadable(e: OSError) -> None:
        raise DataError(
            f"Cannot list {e.filename}: {e.strerror}; check its permissions (its clips would be missing)."
        ) from e

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=True):  # depth-limited
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if _has_split_dir(here):
            found.append(here)
            dirnames[:] = []  # don't look for machines inside a machine folder
            continue
        outside += [here / f for f in sorted(filenames) if _is_audio(Path(f))]
        if len(here.relative_to(root).parts) >= _MAX_DEPTH:
            dirnames[:] = []
    return found, outside


def _refuse_outside(root: Path, outside: Sequence[Path], machine_dirs: bool) -> None:
    """DataError for audio files under ``root`` that no layout reads: beside its machine folders
    (``DATA/valve/*.wav`` without train/test, a clip in DATA itself) or, in a loose folder of
    audio files, in its sub-folders. They would silently go missing from every output."""
    unread = [p for p in outside if machine_dirs or p.parent != root]
    if not unread:
        return
    first = unread[0]
    where = (
        f"outside the machine folders of {root} (which keep their clips in <machine>/{{{','.join(SPLITS)}}}/)"
        if machine_dirs
        else f"in a sub-folder of {root} (a folder of audio files is read one level deep)"
    )
    raise DataError(
        f"{first.parent} holds {len(unread)} audio file(s) {where}, e.g. {first.name}, which asdcli does not "
        "read; move them where they belong, or out of the folder."
    )


def layout_machine(path: Path) -> str:
    """The machine a single file's place in a DCASE layout names (``<machine>/<split>/x.wav``), else ""."""
    parent = path.parent
    if parent.name in SPLITS:
        return parent.parent.name
    return parent.name if _has_split_dir(parent) else ""


def _clips_in(path: Path) -> list[Clip]:
    if path.is_file():
        if not _is_audio(path):
            raise DataError(f"{path} is not a .wav file; {EXPECTED_LAYOUT}.")
        split = path.parent.name if path.parent.name in SPLITS else ""
        return [make_clip(path, layout_machine(path), split)]
    if path.name in SPLITS and not _has_split_dir(path):
        return [make_clip(p, path.parent.name, path.name) for p in _split_files(path)]
    if _has_split_dir(path):
        return _machine_clips(path)
    machine_dirs, outside = _find_machine_dirs(path)
    _refuse_outside(path, outside, bool(machine_dirs))
    clips = [c for m in machine_dirs for c in _machine_clips(m)]
    # A loose folder of wav files: machine unknown unless a stage is told otherwise.
    return clips or [make_clip(p) for p in _audio_files(path)]


def discover_clips(paths: Sequence[Path | str], splits: Collection[str] | None = None) -> list[Clip]:
    """Find every audio clip under dataset roots, machine folders, split folders or files.

    Parameters
    ----------
    paths : sequence of Path
        Any mix of ``data/dev`` (holding ``<machine>/{train,test,supplemental}``), an official
        root (``dev_data/raw/<machine>/...``, ``eval_data/raw/<machine>/...``), machine folders,
        split folders and single ``.wav`` files.
    splits : collection of str, optional
        Keep only clips of these splits (``"train"``, ``"test"``, ``"supplemental"``).

    Returns
    -------
    list of Clip
        Sorted by (machine, split, file name, path); a file reached through two of ``paths``
        (``data/dev`` and ``data/dev/fan``) is one clip.

    Raises
    ------
    DataError
        A path does not exist or nothing was found; a folder cannot be listed (its clips would go
        missing); an audio-named entry is a dangling or looping symlink; two clip paths are the same
        file (a symlink or hard link to another clip).
    """
    if splits is not None:
        bad = sorted(set(splits) - set(SPLITS))
        if bad:
            raise ConfigError(f"Unknown split(s) {', '.join(bad)}; choose from {', '.join(SPLITS)}.")
    if not paths:
        raise DataError(f"No input path given; {EXPECTED_LAYOUT}.")
    found: dict[str, Clip] = {}  # by absolute path: one file reached through two given paths is one clip
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise DataError(f"{path} does not exist; {EXPECTED_LAYOUT}.")
        for clip in _clips_in(path):
            found.setdefault(os.path.abspath(clip.path), clip)
    _check_aliases(found.values())
    clips = [c for c in found.values() if splits is None or c.split in splits]
    if not clips:
        what = f" {'/'.join(sorted(splits))}" if splits is not None else ""
        raise DataError(f"No{what} audio clips found in {', '.join(str(p) for p in paths)}; {EXPECTED_LAYOUT}.")
    return sorted(clips, key=lambda c: (c.machine, c.split, c.name, str(c.path)))


def _check_aliases(clips: Iterable[Clip]) -> None:
    """DataError when two clip paths are the same file (a symlink or hard link to another clip):
    it would count twice, or leak a test clip into training."""
    seen: dict[tuple[int, int], Path] = {}
    for clip in clips:
        st = clip.path.stat()
        first = seen.setdefault((st.st_dev, st.st_ino), clip.path)
        if first != clip.path:
            raise DataError(f"{first} and {clip.path} are the same file (a link to another clip); keep one of them.")


def group_by_machine(clips: Iterable[Clip]) -> dict[str, list[Clip]]:
    """Clips per machine name, in the order given."""
    groups: dict[str, list[Clip]] = {}
    for clip in clips:
        groups.setdefault(clip.machine, []).append(clip)
    return groups


COUNT_COLUMNS = (
    "machine",
    "train source",
    "train target",
    "test source normal",
    "test source anomaly",
    "test target normal",
    "test target anomaly",
    "test unlabelled",
    "supplemental",
    "other",
)


def count_clips_table(clips: Iterable[Clip]) -> list[tuple[str, ...]]:
    """Clip counts per machine in the order of :data:`COUNT_COLUMNS` (for summaries on stderr)."""
    table: list[tuple[str, ...]] = []
    for machine, group in sorted(group_by_machine(clips).items()):
        counts = dict.fromkeys(COUNT_COLUMNS[1:], 0)
        for c in group:
            if c.split == "train" and c.domain:
                col = f"train {c.domain}"
            elif c.split == "test":
                col = f"test {c.domain} {c.label}" if c.domain and c.label else "test unlabelled"
            else:
                col = "supplemental" if c.split == "supplemental" else "other"
            counts[col] += 1
        table.append((machine or "?", *(str(v) for v in counts.values())))
    return table
