"""Clip discovery: which clips a folder holds, with which audio and which prompt.

The one discovery of the package: training (:func:`scan_dataset`), evaluation
(``need_audio=False, strict_prompts=False``) and ``python -m selva_core.generate`` (its folder's
videos through :func:`group_files`, prompts through :func:`read_prompts`) read a folder by the
same grouping, prompt and probing rules.

A data folder is flat (sub-folders are not searched). Per stem it may hold:

* a video (``.mp4 .mov .mkv .webm .avi``) -- its audio comes from a same-stem audio file (any
  of :data:`~selva_core.data.audio.AUDIO_EXTENSIONS`: ``.wav .flac .mp3 .ogg .oga .opus .m4a``
  ...) when one exists, else from the video's own track;
* or a feature ``.npz`` (ComfyUI-SelVA format) with a same-stem audio file.

A video and an ``.npz`` of the same stem: the video is used. Prompts: ``prompts.txt`` >
prompt stored in the ``.npz`` > the folder name. Scanning opens every file cheaply (headers
only, plus a read of their packets to measure what they really hold) so unreadable or unusable
clips are reported before any model work, and a file holding less than its header promises
(truncated) is warned about with both lengths. The audio content itself (silence, NaN, exact
length) is checked when it is decoded for the feature cache.

Evaluation renders a clip from its picture and keeps one without sound: with
``need_audio=False`` the sound is only a reference (not probed here; read when the evaluation
copies it), and lengths are left to the feature extraction; with ``strict_prompts=False`` an
unusable ``prompts.txt`` line is a warning and its clip takes its fallback prompt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from selva_core.data.audio import (
    AUDIO_EXTENSIONS,
    check_audio_format,
    looked_for,
    no_audio_error,
    probe_audio_file,
)
from selva_core.data.container import is_truncated
from selva_core.data.errors import (
    BadClipError,
    EmptyDatasetError,
    SkipReport,
    check_on_bad_clip,
    handle_bad_clip,
    handle_bad_line,
)
from selva_core.data.npz_import import NPZ_EXTENSION, read_feature_npz
from selva_core.data.prompts import (
    PROMPTS_FILENAME,
    PromptEntry,
    PromptLineError,
    folder_prompt,
    parse_prompts,
)
from selva_core.data.video import VIDEO_EXTENSIONS, probe_video
from selva_core.variants import min_duration

log = logging.getLogger(__name__)

KNOWN_EXTENSIONS: tuple[str, ...] = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS + (NPZ_EXTENSION,)
EXPECTED_LAYOUT = (
    f"expected video files ({' '.join(VIDEO_EXTENSIONS)}), optionally each with a same-stem "
    f"audio file ({' '.join(AUDIO_EXTENSIONS)}), or .npz feature files each with a same-stem "
    f"audio file, plus an optional {PROMPTS_FILENAME}"
)


@dataclass(frozen=True)
class ClipSource:
    """One clip of a folder. Exactly one of ``video_path`` / ``npz_path`` is set; ``name``
    (the file stem) keys every output of the clip.

    ``audio_path`` is None when the audio comes from the video's own track.
    ``prompt_source`` says where the prompt came from: ``prompts.txt``, ``npz`` or ``folder``.
    ``seconds``: the picture's length (or the ``.npz`` features'). ``has_audio``: the clip has
    sound (a same-stem audio file or the video's track; only False for ``need_audio=False``).
    ``role``: what the clip is for: ``train``, or in an evaluation ``eval`` (compared with its
    reference) or ``drift`` (a clip unlike the training set; only compared with the baseline).
    """

    name: str
    video_path: Path | None
    audio_path: Path | None
    prompt: str
    npz_path: Path | None = None
    prompt_source: str = "prompts.txt"
    seconds: float | None = None
    has_audio: bool = True
    role: str = "train"

    @property
    def main_path(self) -> Path:
        """The file that defines the clip (video or npz), used in messages."""
        path = self.video_path if self.video_path is not None else self.npz_path
        assert path is not None
        return path

    @property
    def audio_from_video(self) -> bool:
        return self.audio_path is None

    def files(self) -> list[tuple[str, Path]]:
        """(role, path) of every file whose bytes the clip's features depend on."""
        return [(r, p) for r, p in (("video", self.video_path), ("npz", self.npz_path),
                                    ("audio", self.audio_path)) if p is not None]


@dataclass
class ClipFiles:
    """The files of one stem, by kind."""

    videos: list[Path]
    audios: list[Path]
    npzs: list[Path]


def group_files(data_dir: Path) -> dict[str, ClipFiles]:
    """The one grouping rule: the folder's clip files by stem (sorted by name; hidden files,
    sub-folders and other files are not clip files)."""
    groups: dict[str, ClipFiles] = {}
    for path in sorted(data_dir.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        suffix = path.suffix.lower()
        if suffix in VIDEO_EXTENSIONS:
            kind = "videos"
        elif suffix in AUDIO_EXTENSIONS:
            kind = "audios"
        elif suffix == NPZ_EXTENSION:
            kind = "npzs"
        else:
            if path.name != PROMPTS_FILENAME:
                log.debug("ignoring %s (not a clip file)", path)
            continue
        group = groups.setdefault(path.stem, ClipFiles([], [], []))
        getattr(group, kind).append(path)
    return groups


def _warn_truncated(path: Path, what: str, promised: float | None, held: float | None) -> None:
    if is_truncated(promised, held):
        log.warning("%s: the file looks truncated: its header promises %.2f s of %s but it "
                    "holds only %.2f s; the %.2f s it holds are used", path, promised, what,
                    held, held)


def _names(paths: list[Path]) -> str:
    return ", ".join(p.name for p in paths)


def _check_length(path: Path, length: float | None, what: str) -> None:
    if length is not None and length + 1e-3 < min_duration():
        raise BadClipError(
            path,
            f"the {what} is only {length:.2f} s long; SelVA needs at least "
            f"{min_duration():.2f} s (one 16-frame sync window)",
            "use a longer clip or remove it",
        )


def _probe_clip(stem: str, group: ClipFiles, need_audio: bool = True
                ) -> tuple[Path | None, Path | None, Path | None, str | None, float | None, bool]:
    """The one probe: pair and probe one stem's files -> (video, audio, npz, npz prompt,
    seconds, has sound); raise if unusable. ``need_audio=False``: the sound is not probed and
    lengths are not checked (see the module docstring)."""
    if len(group.videos) > 1:
        raise BadClipError(group.videos[0], f"several videos share the name {stem!r} "
                           f"({_names(group.videos)})", "rename or remove all but one")
    if len(group.audios) > 1:
        raise BadClipError(group.audios[0], f"several audio files share the name {stem!r} "
                           f"({_names(group.audios)})", "rename or remove all but one")
    if len(group.npzs) > 1:  # cannot happen on case-sensitive names with one suffix; kept safe
        raise BadClipError(group.npzs[0], f"several .npz files share the name {stem!r}",
                           "rename or remove all but one")
    audio = group.audios[0] if group.audios else None
    if audio is not None and need_audio:
        info = probe_audio_file(audio)
        check_audio_format(audio, info.sample_rate, info.channels)
        _warn_truncated(audio, "audio", info.header_duration, info.duration)
        _check_length(audio, info.duration, "audio")
    if group.videos:
        video = group.videos[0]
        if group.npzs:
            log.info("%s: %s is used; %s is ignored", stem, video.name, group.npzs[0].name)
        vinfo = probe_video(video)
        if need_audio:
            _check_video(stem, video, vinfo, audio)
        return video, audio, None, None, vinfo.duration, audio is not None or vinfo.has_audio
    if group.npzs:
        npz = group.npzs[0]
        if audio is None and need_audio:
            raise BadClipError(
                npz, "a feature .npz needs a same-stem audio file and none was found "
                f"(looked for {looked_for(stem)})",
                "add one of those next to it, or remove the .npz")
        features = read_feature_npz(npz)
        return None, audio, npz, features.prompt, features.visual_length, audio is not None
    assert audio is not None
    raise BadClipError(audio, "an audio file without a same-stem video or .npz",
                       f"add {stem}.mp4 (or another video) or remove the audio file")


def _check_video(stem: str, video: Path, vinfo, audio: Path | None) -> None:
    """A training clip's video: long enough, and its own sound usable when it has no
    same-stem audio file; truncated streams are warned about."""
    _warn_truncated(video, "video", vinfo.header_duration, vinfo.duration)
    if audio is None:
        if not vinfo.has_audio:
            raise no_audio_error(video)
        if vinfo.audio_problem is not None:
            raise BadClipError(video, vinfo.audio_problem,
                               f"add {stem}.wav (or another same-stem audio file) next to "
                               "it, or re-encode the video")
        check_audio_format(video, vinfo.audio_sample_rate, vinfo.audio_channels)
        _warn_truncated(video, "audio", vinfo.audio_header_duration, vinfo.audio_duration)
        _check_length(video, vinfo.audio_duration, "audio track")
    _check_length(video, vinfo.duration, "video")


def read_prompts(folder: Path, clip_keys: set[str], prompts_file: str = PROMPTS_FILENAME
                 ) -> tuple[dict[str, PromptEntry], list[PromptLineError]]:
    """The one prompt rule's file: ``folder/prompts_file`` parsed against the folder's clip
    stems (both empty without the file); see :func:`~selva_core.data.prompts.parse_prompts`."""
    path = folder / prompts_file
    if not path.is_file():
        return {}, []
    return parse_prompts(path, KNOWN_EXTENSIONS, clip_keys)


def _folder_prompts(data_dir: Path, prompts_file: str, clip_files: dict[str, Path],
                    strict: bool, on_bad_clip: str, report: SkipReport | None
                    ) -> tuple[dict[str, PromptEntry], set[str]]:
    """The usable prompts by stem and the clips skipped for an unusable line (``strict``;
    otherwise such a line is a warning and its clip keeps its fallback prompt)."""
    prompts, errors = read_prompts(data_dir, set(clip_files), prompts_file)
    bad_prompt: set[str] = set()
    for error in errors:
        if not strict:
            log.warning("%s", error)
        elif error.key in clip_files:
            if error.key in bad_prompt:
                continue  # the clip is already skipped for an earlier line
            bad_prompt.add(error.key)
            handle_bad_clip(BadClipError(
                clip_files[error.key], f"skipped because {prompts_file} {error.problem}",
                error.fix), on_bad_clip, report)
        else:
            handle_bad_line(error, on_bad_clip, report)
    for key, entry in prompts.items():
        if key not in clip_files and strict:
            handle_bad_line(BadClipError(
                data_dir / prompts_file,
                f"line {entry.line} gives a prompt for {entry.name!r} but the folder has no "
                f"video or .npz named {key!r}",
                "fix the name or remove the line"), on_bad_clip, report)
    return prompts, bad_prompt


def scan_dataset(
    data_dir: str | Path,
    *,
    on_bad_clip: str = "skip",
    report: SkipReport | None = None,
    prompts_file: str = PROMPTS_FILENAME,
    need_audio: bool = True,
    strict_prompts: bool = True,
    role: str = "train",
) -> list[ClipSource]:
    """Find the clips of ``data_dir``, pair their audio, resolve prompts, probe every file.

    ``on_bad_clip='skip'`` logs and records (in ``report``) each unusable clip and goes on;
    ``'stop'`` raises BadClipError at the first one. A clip whose ``prompts.txt`` line cannot be
    used is an unusable clip (it never trains with another prompt); a ``prompts.txt`` line that
    names no clip of the folder is recorded as an ignored line, not a skipped clip. A folder
    without any usable clip always raises EmptyDatasetError. Clips come sorted by name.
    ``need_audio`` / ``strict_prompts`` False: evaluation's reading (module docstring);
    ``role`` is given to every clip.
    """
    check_on_bad_clip(on_bad_clip)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise EmptyDatasetError(
            data_dir, f"{data_dir} is not a folder", f"point it at a folder; {EXPECTED_LAYOUT}"
        )
    groups = group_files(data_dir)
    clip_files = {key: (g.videos or g.npzs)[0] for key, g in groups.items() if g.videos or g.npzs}
    prompts, bad_prompt = _folder_prompts(data_dir, prompts_file, clip_files, strict_prompts,
                                          on_bad_clip, report)
    if not groups:
        raise EmptyDatasetError(data_dir, f"no clips found in {data_dir}", EXPECTED_LAYOUT)

    fallback = folder_prompt(data_dir)
    clips: list[ClipSource] = []
    for stem, group in groups.items():
        if stem in bad_prompt:
            continue
        try:
            video, audio, npz, npz_prompt, seconds, has_audio = _probe_clip(stem, group,
                                                                            need_audio)
        except BadClipError as error:
            handle_bad_clip(error, on_bad_clip, report)
            continue
        if stem in prompts:
            prompt, source = prompts[stem].prompt, "prompts.txt"
        elif npz_prompt:
            prompt, source = npz_prompt, "npz"
        else:
            prompt, source = fallback, "folder"
        clips.append(ClipSource(stem, video, audio, prompt, npz, source, seconds, has_audio,
                                role))

    if not clips:
        raise EmptyDatasetError(
            data_dir, f"no usable clips in {data_dir}: all {len(groups)} were skipped "
            "(reasons logged above)", EXPECTED_LAYOUT)
    log.info("found %d clip(s) in %s", len(clips), data_dir)
    return clips
