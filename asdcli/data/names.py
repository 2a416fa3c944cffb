"""DCASE file names: the Clip record, the fields parsed from a name, the error for a missing one.

File-name forms accepted by :func:`parse_filename`::

    section_00_source_train_normal_0000_pro_A_vel_12_loc_B.wav   2021-2025, with attributes
    section_00_target_test_anomaly_0012_noAttribute.wav           attributes hidden
    section_00_source_test_normal_0000.wav                        no attribute part
    section_00_0042.wav                                           anonymised eval test clip
    section_00_machine_0001_.wav, section_00_noise_0003.wav       2025 supplemental clips
    normal_id_00_00000000.wav, anomaly_id_02_00000042.wav         2020
    id_05_00000000.wav                                            2020 anonymised eval test clip

Any other name is kept with every field unknown (``""``); stages that need a field call
:func:`require_field`, which names the offending files.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from asdcli.errors import DataError

SPLITS = ("train", "test", "supplemental")
DOMAINS = ("source", "target")
LABELS = ("normal", "anomaly")
KINDS = ("machine", "noise")
AUDIO_SUFFIXES = (".wav", ".flac")
# Audio that soundfile or a recorder may produce but the layout does not read: an error, never skipped.
OTHER_AUDIO_SUFFIXES = (".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".m4a", ".aac", ".wma", ".au", ".caf",
                        ".w64", ".rf64")  # fmt: skip
NO_ATTRIBUTE = "noAttribute"

_HEADER = {
    **dict.fromkeys(DOMAINS, "domain"),
    **dict.fromkeys(SPLITS, "split"),
    **dict.fromkeys(LABELS, "label"),
    **dict.fromkeys(KINDS, "kind"),
}


@dataclass(frozen=True)
class ParsedName:
    """Fields read from a bare file name; ``""`` means unknown.

    ``form`` says which convention matched: ``"dcase"`` (2021-2025 labelled names),
    ``"anonymous"`` (eval test names), ``"supplemental"``, ``"dcase2020"`` or ``"unknown"``.
    """

    section: str = ""
    domain: str = ""
    split: str = ""
    label: str = ""
    index: str = ""
    attributes: tuple[tuple[str, str], ...] = ()
    kind: str = ""
    form: str = "unknown"


@dataclass(frozen=True)
class Clip:
    """One audio file with what its name and folders say about it (``""`` = unknown).

    domain in {"source", "target", ""}, split in {"train", "test", "supplemental", ""},
    label in {"normal", "anomaly", ""}, kind in {"machine", "noise", ""} (supplemental only).
    """

    path: Path
    machine: str
    section: str
    domain: str
    split: str
    label: str
    index: str
    attributes: tuple[tuple[str, str], ...]
    kind: str

    @property
    def name(self) -> str:
        """The bare file name, as written in submission files."""
        return self.path.name

    @property
    def attribute_dict(self) -> dict[str, str]:
        return dict(self.attributes)


def _strip_suffix(name: str) -> str:
    # Not Path.suffix: attribute values may contain dots ("vol_0.5").
    lower = name.lower()
    for suffix in AUDIO_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _parse_attributes(tokens: Sequence[str]) -> tuple[tuple[str, str], ...]:
    tokens = [t for t in tokens if t]  # trailing "_" as in "section_00_machine_0001_.wav"
    if tokens == [NO_ATTRIBUTE] or not tokens:
        return ()
    pairs = [(tokens[i], tokens[i + 1]) for i in range(0, len(tokens) - 1, 2)]
    if len(tokens) % 2:
        pairs.append((tokens[-1], ""))  # a lone token (e.g. 2022 "A1Spd28VMic1") keeps its text
    return tuple(pairs)


def _parse_section_form(tokens: list[str]) -> ParsedName:
    """Parse ``section_SS_[header tokens]_NNNN[_attributes]``; header tokens in any order."""
    fields: dict[str, str] = {}
    rest = tokens[2:]
    i = 0
    while i < len(rest) and rest[i] in _HEADER and _HEADER[rest[i]] not in fields:
        fields[_HEADER[rest[i]]] = rest[i]
        i += 1
    if i >= len(rest) or not rest[i].isdigit():
        return ParsedName(section=tokens[1])
    kind = fields.get("kind", "")
    if kind:
        form, split = "supplemental", "supplemental"
    elif {"domain", "split", "label"} <= fields.keys():
        form, split = "dcase", fields["split"]
    elif not fields:
        form, split = "anonymous", ""
    else:
        form, split = "unknown", fields.get("split", "")
    return ParsedName(
        section=tokens[1],
        domain=fields.get("domain", ""),
        split=split,
        label=fields.get("label", ""),
        index=rest[i],
        attributes=_parse_attributes(rest[i + 1 :]),
        kind=kind,
        form=form,
    )


def parse_filename(name: str) -> ParsedName:
    """Read section, domain, split, label, index, attributes and kind from a file name.

    Never raises: a name of no known form gives ``ParsedName()`` (every field unknown).

    Parameters
    ----------
    name : str
        Bare file name (a path's directories are ignored), e.g.
        ``"section_00_source_train_normal_0000_vel_12_loc_B.wav"``.
    """
    tokens = _strip_suffix(Path(name).name).strip().split("_")  # " section_00_....wav" keeps its labels
    if len(tokens) >= 3 and tokens[0] == "section" and tokens[1].isdigit():
        return _parse_section_form(tokens)
    if len(tokens) == 4 and tokens[0] in LABELS and tokens[1] == "id" and tokens[2].isdigit() and tokens[3].isdigit():
        return ParsedName(section=tokens[2], label=tokens[0], index=tokens[3], form="dcase2020")
    if len(tokens) == 3 and tokens[0] == "id" and tokens[1].isdigit() and tokens[2].isdigit():
        return ParsedName(section=tokens[1], index=tokens[2], form="anonymous")
    return ParsedName()


def make_clip(path: Path, machine: str = "", folder_split: str = "") -> Clip:
    """Build a Clip from a path; the name's split wins, the folder's split fills in when absent."""
    p = parse_filename(path.name)
    return Clip(
        path=path,
        machine=machine,
        section=p.section,
        domain=p.domain,
        split=p.split or folder_split,
        label=p.label,
        index=p.index,
        attributes=p.attributes,
        kind=p.kind,
    )


def require_field(clips: Iterable[Clip], field: str, stage: str, *, show: int = 5) -> None:
    """Raise DataError when a clip lacks ``field`` (e.g. ``"label"``) that ``stage`` needs.

    The message names up to ``show`` offending files and how many there are in all.
    """
    if field not in Clip.__dataclass_fields__:
        raise ValueError(f"Clip has no field {field!r}")
    missing = [str(c.path) for c in clips if not getattr(c, field)]
    if missing:
        raise missing_field_error(field, stage, missing, show=show)


def missing_field_error(field: str, stage: str, files: Sequence[str], *, show: int = 5) -> DataError:
    """The DataError saying that ``files`` (paths or names) lack ``field``, which ``stage`` needs."""
    names = ", ".join(files[:show])
    more = f" and {len(files) - show} more" if len(files) > show else ""
    hint = (
        "put the clips in DATA/<machine>/{train,test}/"
        if field == "machine"
        else "use official DCASE names such as section_00_source_test_normal_0000_<attributes>.wav"
    )
    return DataError(
        f"{stage} needs the {field} of every clip, but {len(files)} clip(s) have none: {names}{more}; {hint}."
    )
