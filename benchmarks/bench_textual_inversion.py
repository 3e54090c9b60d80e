"""What one textual-inversion training step costs per example, and what the alternative would.

Per clip of ``--duration`` seconds (random weights at each variant's true sizes; ``tiny_16k``
at its toy sizes), median of ``--repeats`` forward + backward passes:

* ``generator_ms``: the MM-DiT flow-matching loss with the gradient flowing into the CLIP-text
  features (what a LoRA step also runs);
* ``clip_text_ms``: the CLIP text tower from the spliced input embeddings to the features and
  back into the token's vectors: the extra cost of the chosen design (TextSynch on the base
  prompt, its sync features cached);
* ``textsynch_text_ms``: TextSynch's text-conditioned part (T5 states -> ``text_proj`` ->
  cross-attention blocks -> spatial aggregation) re-run from cached patch tokens, with the
  gradient into the T5 states: what training the T5 vectors would add per step, on top of a
  T5 forward + backward (``t5_ms``);
* ``patch_cache_mb``: the bf16 patch tokens that alternative would have to cache per clip
  (the current cache keeps ~0.1 MB of sync features instead).

    python benchmarks/bench_textual_inversion.py [--variants tiny_16k small_16k] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from selva_core.model.generator import SelvaGenerator  # noqa: E402
from selva_core.model.text_encoders import ClipTextEncoder, T5TextEncoder  # noqa: E402
from selva_core.model.textual_inversion import TokenEmbedding, encode_clip  # noqa: E402
from selva_core.model.video_encoder import TextSynch  # noqa: E402
from selva_core.variants import get_variant  # noqa: E402

# Full-size text towers at random (DFN5B CLIP ViT-H/14 text: width 1024, 24 layers, 16 heads;
# FLAN-T5-base: d_model 768, 12 layers, 12 heads, vocab 32128).
FULL_CLIP = dict(width=1024, layers=24, heads=16)
FULL_T5 = dict(d_model=768, layers=12, heads=12, vocab_size=32128)
PROMPT = "a <metal-scrape> on a steel plate, close up"


def _timed(fn, repeats: int, device: torch.device) -> float:
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first call warms up
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def measure(variant_name: str, duration: float, repeats: int, device: torch.device) -> dict:
    v = get_variant(variant_name)
    seq = v.sequence_lengths(duration)
    torch.manual_seed(0)
    tiny = v.text_encoders.tiny
    clip = (ClipTextEncoder.tiny() if tiny else ClipTextEncoder.tiny(**FULL_CLIP)).to(device)
    t5 = (T5TextEncoder.tiny() if tiny else T5TextEncoder.tiny(**FULL_T5)).to(device)
    gen = SelvaGenerator(v.generator, seq).to(device)
    synch = TextSynch(v.video_encoder).to(device)
    for m in (clip, t5, gen, synch):
        m.requires_grad_(False).eval()
    vec = torch.nn.Parameter(torch.randn(2, clip.width, device=device) * 0.01)
    emb = TokenEmbedding("<metal-scrape>", vec.detach(), torch.zeros(2, t5.d_model))
    text_f = encode_clip(clip, [PROMPT], [emb]).detach()
    x1 = torch.randn(1, seq.latent, v.generator.latent_dim, device=device)
    sync_f = torch.randn(1, seq.sync, v.generator.sync_dim, device=device)
    clip_f = gen.empty_conditions(1)[0]

    def generator_step():
        t = torch.full((1,), 0.5, device=device)
        text = text_f.clone().requires_grad_(True)
        out = gen(x1 * 0.5, clip_f, sync_f, text, t)
        (out.float() ** 2).mean().backward()

    def clip_step():
        encode_clip(clip, [PROMPT], [emb], {emb.token: vec}).sum().backward()
        vec.grad = None

    cfg = v.video_encoder
    segments = seq.sync_segments
    frames = torch.randn(segments, 3, cfg.segment_frames, cfg.frame_size, cfg.frame_size,
                         device=device)
    with torch.no_grad():
        patches = torch.cat([synch.vfeat_extractor.patch_tokens(frames[i:i + 1])
                             for i in range(segments)])
    ids, mask = t5.tokenize([PROMPT])

    def t5_step():
        embeds = t5.model.get_input_embeddings()(ids.to(device)).requires_grad_(True)
        t5.model(inputs_embeds=embeds, attention_mask=mask.to(device).long()
                 ).last_hidden_state.sum().backward()

    states = torch.randn(1, ids.shape[1], cfg.text_dim, device=device)

    def textsynch_step():
        s = states.clone().requires_grad_(True)
        text, m = synch.prepend_sup(s, mask.to(device))
        ctx = synch.text_proj(text).expand(segments, -1, -1)
        x = patches
        for block in synch.synch_text_cross_blocks:
            x = block(x, ctx, m.expand(segments, -1))
        synch.vfeat_extractor.aggregate(x).sum().backward()

    row = {"variant": variant_name, "device": str(device), "duration_s": duration,
           "generator_ms": _timed(generator_step, repeats, device),
           "clip_text_ms": _timed(clip_step, repeats, device),
           "t5_ms": _timed(t5_step, repeats, device),
           "textsynch_text_ms": _timed(textsynch_step, repeats, device),
           "patch_cache_mb": patches.numel() * 2 / 2**20,
           "sync_cache_mb": sync_f.numel() * 2 / 2**20}
    row["chosen_extra"] = row["clip_text_ms"] / row["generator_ms"]
    row["alternative_extra"] = (row["clip_text_ms"] + row["t5_ms"]
                                + row["textsynch_text_ms"]) / row["generator_ms"]
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=["tiny_16k"])
    p.add_argument("--duration", type=float, default=None,
                   help="clip seconds (default: 8 s, 2 s for tiny_16k)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    rows = [measure(name, args.duration or (2.0 if name == "tiny_16k" else 8.0), args.repeats,
                    device) for name in args.variants]
    header = (f"{'variant':<12}{'device':>8}{'gen ms':>9}{'clip ms':>9}{'t5 ms':>8}"
              f"{'synch ms':>10}{'patch MB':>10}{'sync MB':>9}{'TI extra':>10}{'alt extra':>11}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['variant']:<12}{r['device']:>8}{r['generator_ms']:>9.1f}"
              f"{r['clip_text_ms']:>9.1f}{r['t5_ms']:>8.1f}{r['textsynch_text_ms']:>10.1f}"
              f"{r['patch_cache_mb']:>10.1f}{r['sync_cache_mb']:>9.2f}"
              f"{r['chosen_extra']:>9.0%}{r['alternative_extra']:>10.0%}")
    print("TI extra: the CLIP-text pass over a generator pass (per example); alt extra: also "
          "T5 + TextSynch's text part re-run from cached patch tokens")
    result = {"bench": "textual_inversion"}
    for r in rows:
        for key in ("generator_ms", "clip_text_ms", "t5_ms", "textsynch_text_ms",
                    "patch_cache_mb", "sync_cache_mb", "chosen_extra", "alternative_extra"):
            result[f"{key}_{r['variant']}"] = round(r[key], 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
