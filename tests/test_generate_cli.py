"""``python -m selva_core.generate``: WAV + MP4 per clip, bad clips one line each, exit status."""

from __future__ import annotations

import json

import pytest
import soundfile as sf
import torch

from selva_core.audio.sync import motion_sync
from selva_core.data.audio import read_video_audio
from selva_core.data.synthetic import make_synthetic_dataset, write_tone_clip
from selva_core.data.video import decode_frames, probe_video
from selva_core.generate import build_arg_parser, folder_prompts, main, parse_adapter
from selva_core.model.lora import LoRAConfig, attach_lora, save_adapter
from selva_core.pipeline import SelvaPipeline
from selva_core.variants import SYNC_FPS, get_variant

FAST = ["--variant", "tiny_16k", "--steps", "2", "--device", "cpu", "--quiet"]
RATE = 16000


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    make_synthetic_dataset(folder, clips_per_class=1, duration=1.0, size=32)  # bounce, hum
    return folder


def _samples(seconds: float) -> int:
    return get_variant("tiny_16k").render_samples(seconds)


def test_a_folder_gives_a_wav_and_an_mp4_per_clip_and_one_line_per_bad_clip(
    clips, tmp_path, capsys
):
    folder = tmp_path / "in"
    folder.mkdir()
    for p in clips.glob("*"):
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.mp4").write_bytes(b"not a video at all" * 10)
    write_tone_clip(folder / "short.mp4", duration=0.4)
    out = tmp_path / "out"
    assert main([str(folder), "--output_dir", str(out), *FAST]) == 1  # some clips skipped
    err = capsys.readouterr().err.strip().splitlines()
    skipped = [line for line in err if line.startswith("skipped")]
    assert len(skipped) == 2
    assert any("broken.mp4" in line for line in skipped)
    assert any("short.mp4" in line and "0.64" in line for line in skipped)
    assert sorted(p.name for p in out.iterdir()) == [
        "bounce_000.mp4", "bounce_000.wav", "generate_summary.json", "hum_000.mp4",
        "hum_000.wav"]
    wave, rate = sf.read(out / "hum_000.wav", dtype="float32")
    assert rate == RATE and wave.shape == (_samples(1.0),) and wave.std() > 1e-3
    info = probe_video(out / "hum_000.mp4")
    assert info.has_audio and abs(info.duration - 1.0) < 0.05
    sound, sr = read_video_audio(out / "hum_000.mp4")
    assert sr == RATE and sound.shape[-1] >= RATE * 0.95


def test_the_summary_gives_each_clip_its_files_and_onset_vs_motion_figures(
    clips, tmp_path, capsys
):
    out = tmp_path / "out"
    assert main([str(clips / "bounce_000.mp4"), "--output_dir", str(out), *FAST]) == 0
    summary = json.loads((out / "generate_summary.json").read_text(encoding="utf-8"))
    (rec,) = summary["clips"]
    assert rec["clip"] == "bounce_000" and rec["wav"] == "bounce_000.wav"
    # the recorded figures are those of the written sound against the clip's own picture
    wave, _ = sf.read(out / "bounce_000.wav", dtype="float32")
    frames = decode_frames(clips / "bounce_000.mp4", fps=SYNC_FPS)
    expected = motion_sync(wave, RATE, frames[: int(1.0 * SYNC_FPS)], SYNC_FPS)
    assert rec["motion_corr_lag0"] == pytest.approx(expected.corr_lag0, abs=0.05)
    assert abs(rec["motion_best_lag_ms"]) <= 500
    assert "onsets vs motion" in capsys.readouterr().out


def test_duration_cuts_the_sound_and_the_picture(clips, tmp_path):
    out = tmp_path / "out"
    assert main([str(clips / "bounce_000.mp4"), "--duration", "0.8", "--output_dir", str(out),
                 *FAST]) == 0
    wave, _ = sf.read(out / "bounce_000.wav", dtype="float32")
    assert wave.shape == (_samples(0.8),)
    assert abs(probe_video(out / "bounce_000.mp4").duration - 0.8) < 0.05


def _adapter(path):
    pipe = SelvaPipeline.build("tiny_16k", device="cpu")
    work = pipe.fork()
    handle = attach_lora(work.generator, LoRAConfig(rank=4, targets=("attn",)), name="x",
                         variant_name="tiny_16k")
    with torch.no_grad():
        for p in handle.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return save_adapter(work.generator, path, name="x")


def test_seed_and_adapters_decide_the_sound(clips, tmp_path):
    adapter = _adapter(tmp_path / "style.safetensors")
    video = str(clips / "hum_000.mp4")

    def wav(*flags: str):
        out = tmp_path / "_".join(f.strip("-").replace("/", "_") for f in flags)[-60:]
        assert main([video, "--no_mp4", "--output_dir", str(out), *FAST, *flags]) == 0
        assert not (out / "hum_000.mp4").exists()
        return sf.read(out / "hum_000.wav", dtype="float32")[0]

    plain = wav("--seed", "3")
    assert (wav("--seed", "3") == plain).all()
    assert not (wav("--seed", "4") == plain).all()
    styled = wav("--seed", "3", "--adapter", f"{adapter}:0.8")
    assert abs(styled - plain).max() > 1e-3
    assert (wav("--seed", "3", "--adapter", f"{adapter}:0") == plain).all()  # strength 0 = base


def test_bad_flags_missing_inputs_and_bad_adapters_exit_2(clips, tmp_path, capsys):
    video = str(clips / "hum_000.mp4")
    for argv in (
        [video, "--adapter", "style.safetensors:strong", *FAST],
        [video, "--steps", "0", *FAST],
        [video, "--duration", "0.3", *FAST],
        [str(tmp_path / "missing.mp4"), *FAST],
        [video, "--adapter", str(tmp_path / "missing.safetensors"), *FAST],
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2, argv
    capsys.readouterr()
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x00" * 64)
    assert main([video, "--adapter", str(damaged), "--output_dir", str(tmp_path / "o"),
                 *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "damaged.safetensors" in err[0]
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "broken.mp4").write_bytes(b"junk")
    assert main([str(only_bad), "--output_dir", str(tmp_path / "o"), *FAST]) == 2


def test_missing_weights_are_reported_in_one_message(clips, tmp_path, capsys):
    code = main([str(clips / "hum_000.mp4"), "--variant", "small_16k", "--models_dir",
                 str(tmp_path), "--device", "cpu", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "generator_small_16k_sup_5.pth" in err


def test_help_documents_every_flag():
    text = build_arg_parser().format_help()
    for flag in ("--prompt", "--negative_prompt", "--seed", "--steps", "--cfg", "--duration",
                 "--output_dir", "--variant", "--models_dir", "--adapter", "--download",
                 "--device", "--precision", "--offload", "--overlap", "--no_mp4", "--quiet"):
        assert flag in text, flag
    assert "FILE[:STRENGTH]" in text and "tiny_16k" in text


def test_adapter_flags_parse_paths_with_colons_and_default_strength():
    assert parse_adapter("a.safetensors") == (parse_adapter("a.safetensors:1")[0], 1.0)
    assert parse_adapter("dir/a.safetensors:0.25")[1] == 0.25
    path, strength = parse_adapter("C:\\models\\a.safetensors")
    assert str(path) == "C:\\models\\a.safetensors" and strength == 1.0


def test_prompts_txt_gives_each_clip_its_prompt_and_a_bad_line_names_its_clip(clips, tmp_path):
    videos = sorted(clips.glob("*.mp4"))
    prompts, bad = folder_prompts(clips, videos)
    assert set(prompts) == {"bounce_000", "hum_000"} and not bad
    (tmp_path / "prompts.txt").write_text("bounce_000.mp4: a ball\nhum_000 no colon here\n")
    prompts, bad = folder_prompts(tmp_path, videos)
    assert prompts == {"bounce_000": "a ball"} and set(bad) == {"hum_000"}


# --- issue 20: flags, adapter folders, output folder, clip length, full disk ----------------
@pytest.mark.parametrize("flags, needle", [
    (["--cfg", "nan"], "--cfg: must be a finite number"),
    (["--overlap", "-1"], "--overlap: must be a number >= 0"),
    (["--overlap", "8"], "--overlap 8"),
])
def test_a_non_finite_cfg_or_an_impossible_overlap_is_refused(clips, tmp_path, capsys, flags,
                                                              needle):
    with pytest.raises(SystemExit) as info:
        main([str(clips / "hum_000.mp4"), "--output_dir", str(tmp_path / "o"), *FAST, *flags])
    assert info.value.code == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_run_folder_means_its_final_adapter_and_other_folders_are_named(clips, tmp_path,
                                                                          capsys):
    video = str(clips / "hum_000.mp4")
    run = tmp_path / "run"
    run.mkdir()
    _adapter(run / "adapter_final.safetensors")
    by_file, by_folder = tmp_path / "file", tmp_path / "folder"
    assert main([video, "--no_mp4", "--output_dir", str(by_file), *FAST, "--adapter",
                 f"{run / 'adapter_final.safetensors'}:0.8"]) == 0
    assert main([video, "--no_mp4", "--output_dir", str(by_folder), *FAST, "--adapter",
                 f"{run}:0.8"]) == 0
    assert (by_file / "hum_000.wav").read_bytes() == (by_folder / "hum_000.wav").read_bytes()
    other = tmp_path / "notes"
    other.mkdir()
    loop = tmp_path / "loop.safetensors"
    loop.symlink_to(loop)
    for path, needle in ((other, "is a folder, not an adapter file"),
                         (loop, "is a symbolic-link loop")):
        with pytest.raises(SystemExit) as info:
            main([video, "--output_dir", str(tmp_path / "o"), *FAST, "--adapter", str(path)])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert str(path) in err and needle in err and "does not exist" not in err


def test_an_output_folder_that_is_a_file_is_named_and_no_clip_is_blamed(clips, tmp_path,
                                                                        capsys):
    out = tmp_path / "out"
    out.write_text("my notes")
    with pytest.raises(SystemExit) as info:
        main([str(clips), "--output_dir", str(out), *FAST])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"--output_dir {out} is a file, not a folder" in err and "skipped" not in err
    assert out.read_text() == "my notes"


def test_a_duration_longer_than_the_clip_says_so_and_renders_the_exact_clip_length(
        clips, tmp_path, caplog):
    out = tmp_path / "out"
    clip = clips / "hum_000.mp4"
    assert main([str(clip), "--duration", "3", "--no_mp4", "--output_dir", str(out),
                 *FAST]) == 0
    assert "shorter than --duration 3 s" in caplog.text
    wave, _ = sf.read(out / "hum_000.wav", dtype="float32")
    assert wave.shape == (round(probe_video(clip).duration * RATE),)


@pytest.mark.parametrize("seconds", [0.8, 1.0])
def test_a_single_window_render_has_exactly_the_requested_length(clips, tmp_path, seconds):
    out = tmp_path / "out"
    assert main([str(clips / "bounce_000.mp4"), "--duration", str(seconds), "--no_mp4",
                 "--output_dir", str(out), *FAST]) == 0
    wave, _ = sf.read(out / "bounce_000.wav", dtype="float32")
    assert wave.shape == (round(seconds * RATE),)


def test_a_full_disk_stops_with_one_line_naming_the_folder_and_keeps_the_clips_done(
        clips, tmp_path, capsys):
    """A real file-size limit (``ulimit -f``) in a child process: no WAV fits."""
    import os
    import resource
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "out"
    limit = 16 * 1024  # a 1 s 16-bit WAV is ~32 KB

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-m", "selva_core.generate", str(clips), "--output_dir", str(out),
         *FAST], capture_output=True, text=True, preexec_fn=small_files, timeout=600,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and str(out) in lines[0] and "file-size limit" in lines[0], lines
    assert "0 clip(s) done before" in lines[0]
    assert not [p for p in out.iterdir() if ".tmp" in p.name]  # nothing half-written
