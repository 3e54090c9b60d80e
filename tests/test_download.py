"""Fetching weights: the offline listing, one fast message when the hub is unreachable, and a
simulated hub (a local HTTP server behind ``HF_ENDPOINT``, spoken to through huggingface_hub's
own client) proving resumed downloads and checksum failures. The real hub is never contacted.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
from pathlib import Path

import pytest

from selva_core import download as download_cli
from selva_core.variants import OFFICIAL_VARIANTS, VARIANTS, WeightFile
from selva_core.weights import (
    MissingWeightsError,
    WeightsError,
    ensure_files,
    hub,
    preflight,
    read_sidecar,
)
from selva_core.weights.models_dir import HUB_SHA256, PUBLISHED_MD5, RECORDED

BIG = bytes(range(256)) * 400  # 102,400 bytes: the "large" (LFS-like) file
SMALL = b'{"model_type": "toy"}\n'


# --- a simulated hub ---------------------------------------------------------------------------
class SimulatedHub:
    """Serves ``/<repo>/resolve/main/<file>`` like the hub: HEAD gives size and ETag (the sha256
    for LFS files, a git-style id otherwise); GET honours ``Range: bytes=N-``.

    ``cut_after[path] = n``: the next GET of ``path`` sends n bytes of the body, then drops the
    connection. ``ignore_range``: answer ranged requests with the whole file (200).
    """

    def __init__(self, files: dict[str, bytes], lfs: set[str] = frozenset()):
        self.files = files
        self.lfs = set(lfs)
        self.cut_after: dict[str, int] = {}
        self.ignore_range = False
        self.requests: list[tuple[str, str, str | None]] = []
        hub_ = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _lookup(self):
                path = self.path.split("?", 1)[0]
                hub_.requests.append((self.command, path, self.headers.get("Range")))
                body = hub_.files.get(path)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                return path, body

            def _head(self, path, body, status=200, start=0):
                self.send_response(status)
                etag = (hashlib.sha256(body).hexdigest() if path in hub_.lfs
                        else hashlib.sha1(body).hexdigest())
                self.send_header("ETag", f'"{etag}"')
                self.send_header("X-Repo-Commit", "0" * 40)
                self.send_header("Content-Length", str(len(body) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()

            def do_HEAD(self):
                path, body = self._lookup()
                if body is not None:
                    self._head(path, body)

            def do_GET(self):
                path, body = self._lookup()
                if body is None:
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and not hub_.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                self._head(path, body, 206 if start else 200, start)
                payload = body[start:]
                cut = hub_.cut_after.pop(path, None)
                if cut is not None:
                    self.wfile.write(payload[:cut])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(payload)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def gets(self, path: str) -> list[str | None]:
        return [rng for method, p, rng in self.requests if method == "GET" and p == path]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _path(file: WeightFile) -> str:
    return f"/{file.repo_id}/resolve/main/{file.filename}"


BIG_FILE = WeightFile("someone/selva", "weights/big.pth")
SMALL_FILE = WeightFile("someone/text", "config.json", local_dir="text")
FILES = {"big": BIG_FILE, "config": SMALL_FILE}


@pytest.fixture
def sim_hub(monkeypatch):
    served = SimulatedHub({_path(BIG_FILE): BIG, _path(SMALL_FILE): SMALL}, lfs={_path(BIG_FILE)})
    monkeypatch.setenv("HF_ENDPOINT", served.endpoint)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    yield served
    served.close()


def _quiet(done, total):
    pass


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection or hub call fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the network must not be touched")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(hub, "probe", refuse)
    monkeypatch.setattr(hub, "fetch", refuse)


# --- listing -------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", [*OFFICIAL_VARIANTS, "all"])
def test_list_prints_url_size_and_destination_of_every_file_without_network(
    variant, tmp_path, capsys, no_network, monkeypatch
):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert download_cli.main(["--variant", variant, "--list", "--models_dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("#")
    rows = [line.split("\t") for line in lines[1:]]
    names = OFFICIAL_VARIANTS if variant == "all" else [variant]
    expected = {f.relative_path: f for n in names for f in VARIANTS[n].required_files().values()}
    assert len(rows) == len(expected)  # shared files (VAE, video encoder, T5 ...) listed once
    for url, size, dest in rows:
        rel = Path(dest).relative_to(tmp_path.absolute()).as_posix()
        file = expected[rel]
        assert url == f"https://huggingface.co/{file.repo_id}/resolve/main/{file.filename}"
        assert size.startswith("~") if file.approx_size else size == "?"
    kinds = {Path(dest).name for _, _, dest in rows}
    assert {"video_enc_sup_5.pth", "open_clip_pytorch_model.bin", "model.safetensors"} <= kinds
    assert not any(tmp_path.iterdir())  # listing writes nothing


@pytest.mark.parametrize("listing", [False, True])
def test_a_models_dir_that_is_a_file_is_named_in_one_line(tmp_path, capsys, no_network,
                                                          listing):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    argv = ["--variant", "small_16k", "--models_dir", str(notes), *(["--list"] * listing)]
    assert download_cli.main(argv) == 2
    captured = capsys.readouterr()
    assert f"--models_dir {notes} is a file, not a folder" in captured.err
    assert captured.out == "" and notes.read_text() == "mine"


def test_tiny_variant_needs_no_files(tmp_path, no_network):
    assert preflight("tiny_16k", tmp_path, download=True) == {}


# --- one message, fast ----------------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hub_gives_one_message_listing_every_file_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    probes = []
    real_probe = hub.probe
    monkeypatch.setattr(hub, "probe", lambda f, **k: probes.append(f) or real_probe(f, **k))

    def no_sleep(seconds):
        raise AssertionError("no sleeping retries")

    monkeypatch.setattr(time, "sleep", no_sleep)
    models = tmp_path / "models"
    start = time.perf_counter()
    with pytest.raises(MissingWeightsError) as info:
        preflight("small_16k", models, download=True)
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0
    assert len(probes) == 1  # one reachability check, not one per file
    msg = str(info.value)
    required = VARIANTS["small_16k"].required_files()
    assert len(info.value.missing) == len(required) == 12
    for file in required.values():
        assert file.filename in msg and str((models / file.relative_path).absolute()) in msg
    assert "cannot be reached" in msg
    assert f"python -m selva_core.download --variant small_16k --models_dir {models}" in msg
    assert "partial" not in msg  # nothing was downloaded, so nothing claims to be kept
    assert not models.exists() or not any(models.rglob("*"))


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "download=False"])
def test_no_download_allowed_lists_everything_without_network(how, tmp_path, monkeypatch,
                                                              no_network):
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError) as info:
        preflight("large_44k", tmp_path, download=how == "HF_HUB_OFFLINE")
    msg = str(info.value)
    assert ("HF_HUB_OFFLINE is set" if how == "HF_HUB_OFFLINE" else "download=False") in msg
    assert "bigvgan_generator.pt" in msg and "generator_large_44khz_sup_5.pth" in msg
    assert "--variant large_44k" in msg and "12 of 12" in msg


def test_only_the_missing_files_are_listed(tmp_path, monkeypatch, no_network):
    text = VARIANTS["small_16k"].text_encoder_files()
    for file in text.values():
        (tmp_path / file.relative_path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / file.relative_path).write_bytes(b"placed by hand")
    with pytest.raises(MissingWeightsError) as info:
        preflight("small_16k", tmp_path)
    assert {m.key for m in info.value.missing} == {"generator", "video_encoder", "vae", "vocoder"}
    assert "4 of 12" in str(info.value) and "flan-t5-base" not in str(info.value)


def test_the_missing_weights_message_starts_with_what_to_do(tmp_path, no_network):
    with pytest.raises(MissingWeightsError) as info:
        preflight("small_16k", tmp_path)
    first, *rest = str(info.value).splitlines()
    assert "Fetch them with: python -m selva_core.download --variant small_16k" in first
    assert "https://" not in first and any("https://" in line for line in rest)


# --- simulated hub -------------------------------------------------------------------------------
def test_download_from_simulated_hub_verifies_and_records_each_file(sim_hub, tmp_path):
    paths = ensure_files(FILES, tmp_path, download=True, progress=_quiet)
    assert paths["big"].read_bytes() == BIG and paths["config"].read_bytes() == SMALL
    assert paths["config"] == tmp_path / "text" / "config.json"
    # the hub's sha256 of the large file is checked; the small file's sha256 is recorded
    assert read_sidecar(paths["big"])["checked_against"] == HUB_SHA256
    assert read_sidecar(paths["config"]) == {
        **read_sidecar(paths["config"]),
        "checked_against": RECORDED,
        "sha256": hashlib.sha256(SMALL).hexdigest(),
    }
    assert not list(tmp_path.rglob("*.part"))
    # a second run finds everything verified and asks the hub nothing
    before = len(sim_hub.requests)
    assert ensure_files(FILES, tmp_path, download=True, progress=_quiet) == paths
    assert len(sim_hub.requests) == before


def test_interrupted_download_resumes_where_it_stopped(sim_hub, tmp_path):
    sim_hub.cut_after[_path(BIG_FILE)] = 30_000
    seen = []
    with pytest.raises(MissingWeightsError) as info:
        ensure_files(FILES, tmp_path, download=True, progress=lambda d, t: seen.append((d, t)))
    part = tmp_path / ".big.pth.part"
    kept = part.stat().st_size
    assert 0 < kept <= 30_000 and part.read_bytes() == BIG[:kept]
    assert not (tmp_path / "big.pth").exists()  # never under its real name while incomplete
    msg = str(info.value)
    assert f"({kept:,} of {len(BIG):,} bytes) is kept in {part.absolute()}" in msg
    assert "resumes it" in msg and "config.json" in msg  # still missing files listed too
    assert seen[0][1] == len(BIG) + len(SMALL)  # one bar over every file

    paths = ensure_files(FILES, tmp_path, download=True, progress=_quiet)
    assert paths["big"].read_bytes() == BIG
    assert sim_hub.gets(_path(BIG_FILE)) == [None, f"bytes={kept}-"]  # resumed, not restarted
    assert not part.exists()


def test_server_ignoring_the_range_restarts_the_file_cleanly(sim_hub, tmp_path):
    sim_hub.cut_after[_path(BIG_FILE)] = 10_000
    with pytest.raises(MissingWeightsError):
        ensure_files(FILES, tmp_path, download=True, progress=_quiet)
    sim_hub.ignore_range = True
    seen = []
    paths = ensure_files(FILES, tmp_path, download=True, progress=lambda d, t: seen.append(d))
    assert paths["big"].read_bytes() == BIG
    assert seen[-1] == len(BIG) + len(SMALL)  # progress rolled back, not double-counted


@pytest.mark.parametrize("tamper", ["published md5", "hub sha256"])
def test_download_with_wrong_checksum_is_discarded_and_named(tamper, sim_hub, tmp_path,
                                                            monkeypatch):
    if tamper == "published md5":
        files = {"big": WeightFile(BIG_FILE.repo_id, BIG_FILE.filename, md5="0" * 32)}
    else:  # the hub announces the original's sha256 but serves altered bytes of the same size
        files = {"big": BIG_FILE}
        sim_hub.files[_path(BIG_FILE)] = BIG[:-1] + b"!"
        real_probe = hub.probe

        def announce_original(file, **kwargs):
            remote = real_probe(file, **kwargs)
            return hub.RemoteFile(remote.url, remote.location, remote.size,
                                  hashlib.sha256(BIG).hexdigest())

        monkeypatch.setattr(hub, "probe", announce_original)
    with pytest.raises(MissingWeightsError) as info:
        ensure_files(files, tmp_path, download=True, progress=_quiet)
    msg = str(info.value)
    assert "checksum mismatch" in msg and "big.pth" in msg and tamper in msg
    assert "discarded" in msg and "partial" not in msg
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # nothing unverified is kept


def test_verified_download_with_published_md5_is_recorded(sim_hub, tmp_path):
    file = WeightFile(BIG_FILE.repo_id, BIG_FILE.filename, md5=hashlib.md5(BIG).hexdigest())
    path = ensure_files({"big": file}, tmp_path, download=True, progress=_quiet)["big"]
    assert read_sidecar(path)["checked_against"] == f"{PUBLISHED_MD5}, {HUB_SHA256}"


def test_file_missing_on_the_hub_is_named(sim_hub, tmp_path):
    files = {**FILES, "gone": WeightFile("someone/selva", "weights/gone.pth")}
    with pytest.raises(MissingWeightsError) as info:
        ensure_files(files, tmp_path, download=True, progress=_quiet)
    assert "did not answer for gone.pth" in str(info.value)


# --- the command ---------------------------------------------------------------------------------
def test_cli_downloads_then_reports_what_is_where(sim_hub, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(download_cli, "files_for", lambda variants: {
        f.relative_path: f for f in FILES.values()
    })
    args = ["--variant", "small_16k", "--models_dir", str(tmp_path)]
    assert download_cli.main(args) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["file", "status", "size", "checked"]
    big_row = next(r for r in table if r.startswith("big.pth"))
    assert "downloaded" in big_row and HUB_SHA256 in big_row
    assert big_row.endswith(str((tmp_path / "big.pth").absolute()))

    assert download_cli.main([*args, "--verify"]) == 0
    assert "present" in next(r for r in capsys.readouterr().out.splitlines()
                             if r.startswith("big.pth"))


def test_cli_reports_a_damaged_file_with_exit_status_2(sim_hub, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(download_cli, "files_for", lambda variants: {
        f.relative_path: f for f in FILES.values()
    })
    args = ["--variant", "small_16k", "--models_dir", str(tmp_path)]
    assert download_cli.main(args) == 0
    (tmp_path / "big.pth").write_bytes(BIG[:100])
    assert download_cli.main(args) == 2
    err = capsys.readouterr().err
    assert "big.pth" in err and "bytes" in err and "failed verification" in err


def test_cli_rejects_an_unknown_variant(capsys):
    assert download_cli.main(["--variant", "huge_96k", "--list"]) == 1
    assert "huge_96k" in capsys.readouterr().err


def test_damaged_present_file_is_reported_not_overwritten(tmp_path, no_network):
    path = tmp_path / "big.pth"
    path.write_bytes(BIG)
    file = WeightFile(BIG_FILE.repo_id, BIG_FILE.filename, md5="0" * 32)
    with pytest.raises(WeightsError, match="failed verification") as info:
        ensure_files({"big": file}, tmp_path, download=True)
    assert not isinstance(info.value, MissingWeightsError)
    assert path.read_bytes() == BIG


# --- the layout the download produces, used offline -----------------------------------------
def test_text_encoders_load_from_the_models_folder_with_the_network_blocked(
    tmp_path, monkeypatch, no_network
):
    import json

    import open_clip
    import torch
    import transformers
    from transformers import T5Tokenizer

    from selva_core.model.text_encoders import T5TextEncoder, load_text_encoders

    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("building a T5 tokenizer from a vocab list needs transformers >= 5")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = VARIANTS["small_16k"].text_encoders
    clip_dir = tmp_path / "DFN5B-CLIP-ViT-H-14-384"
    t5_dir = tmp_path / "flan-t5-base"
    assert {f.local_dir for f in VARIANTS["small_16k"].text_encoder_files().values()} == {
        clip_dir.name, t5_dir.name
    }
    model_cfg = {
        "embed_dim": 32, "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                     "layers": 1},
    }
    clip_model = open_clip.CLIP(**model_cfg).eval()
    clip_dir.mkdir()
    (clip_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    torch.save(clip_model.state_dict(), clip_dir / "open_clip_pytorch_model.bin")
    t5 = T5TextEncoder.tiny(seed=3)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁a", -1.0), ("▁dog", -2.0)]
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(t5_dir)
    t5.model.save_pretrained(t5_dir)

    clip_enc, t5_enc = load_text_encoders(cfg, models_dir=tmp_path)
    tokens = clip_enc.tokenize(["a dog"])
    with torch.no_grad():
        x = clip_model.token_embedding(tokens) + clip_model.positional_embedding
        want = clip_model.ln_final(clip_model.transformer(x, attn_mask=clip_model.attn_mask))
    want = torch.nn.functional.normalize(want, dim=-1)
    torch.testing.assert_close(clip_enc.encode(["a dog"]), want)
    states, mask = t5_enc.encode(["a dog"])
    assert mask.tolist() == [[True, True, True]]
    with torch.no_grad():
        ids, _ = t5_enc.tokenize(["a dog"])
        torch.testing.assert_close(states, t5.model(input_ids=ids).last_hidden_state)


def test_pipeline_checks_every_file_before_building_anything(tmp_path, no_network, monkeypatch):
    from selva_core import weights
    from selva_core.pipeline import SelvaPipeline, construction

    def no_build(*args, **kwargs):
        raise AssertionError("nothing is built before every file is there")

    monkeypatch.setattr(weights, "build_component", no_build)
    monkeypatch.setattr(construction, "build_component", no_build)
    with pytest.raises(MissingWeightsError) as info:
        SelvaPipeline.build("medium_44k", models_dir=tmp_path)
    assert len(info.value.missing) == len(VARIANTS["medium_44k"].required_files())
    assert "--variant medium_44k" in str(info.value)


def test_ctrl_c_keeps_the_partial_file_and_the_next_run_resumes_it(sim_hub, tmp_path, capsys,
                                                                    monkeypatch):
    monkeypatch.setattr(download_cli, "files_for", lambda variants: {"big.pth": BIG_FILE})
    real_fetch = hub.fetch

    def interrupted(remote, part, on_bytes):
        part.write_bytes(BIG[:1000])
        on_bytes(1000)
        raise KeyboardInterrupt

    monkeypatch.setattr(hub, "fetch", interrupted)
    args = ["--variant", "small_16k", "--models_dir", str(tmp_path)]
    assert download_cli.main(args) == 130
    assert "run the same command to resume" in capsys.readouterr().err
    monkeypatch.setattr(hub, "fetch", real_fetch)
    assert download_cli.main(args) == 0
    assert (tmp_path / "big.pth").read_bytes() == BIG
    assert sim_hub.gets(_path(BIG_FILE)) == ["bytes=1000-"]
