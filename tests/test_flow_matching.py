"""Flow matching: conventions, loss, condition dropout, Euler + CFG (batched == two-pass)."""

from __future__ import annotations

import pytest
import torch

from selva_core.flow_matching import (
    FlowMatchingConfig,
    drop_conditions,
    euler_sample,
    euler_sample_two_pass,
    flow_matching_loss,
    interpolate,
    sample_t,
    velocity_target,
)
from selva_core.model.generator import PreprocessedConditions, SelvaGenerator
from selva_core.variants import get_variant
from tests.conftest import GOLDEN_DIR
from tests.generator_inputs import random_generator_inputs
from tests.golden import load_case, seeded_state_dict

TINY_DURATION = 2.0


@pytest.fixture(scope="module")
def tiny() -> SelvaGenerator:
    torch.manual_seed(1234)
    return SelvaGenerator.from_variant("tiny_16k", duration=TINY_DURATION).eval()


def _features(model: SelvaGenerator, batch: int, seed: int = 0):
    return random_generator_inputs(model, batch, seed)[:4]  # (x, clip_f, sync_f, text_f)


class _CallCounter:
    """Wraps one bound method of a model and records the batch size of every call."""

    def __init__(self, model, name):
        self.model, self.name = model, name
        self.original = getattr(model, name)
        self.batches: list[int] = []

    def __enter__(self):
        def wrapped(*args, **kwargs):
            first = args[0] if args else next(iter(kwargs.values()))
            self.batches.append(first.shape[0])
            return self.original(*args, **kwargs)

        setattr(self.model, self.name, wrapped)
        return self

    def __exit__(self, *exc):
        delattr(self.model, self.name)  # back to the class method


# -- conventions ----------------------------------------------------------------------------
def test_interpolation_is_noise_at_t0_and_data_at_t1_and_target_is_x1_minus_x0():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    assert torch.equal(interpolate(x0, x1, torch.ones(3)), x1)
    assert torch.equal(interpolate(x0, x1, torch.zeros(3)), x0)
    t = torch.tensor([0.25, 0.5, 0.75])
    tb = t[:, None, None]
    torch.testing.assert_close(interpolate(x0, x1, t), (1 - tb) * x0 + tb * x1)
    assert torch.equal(velocity_target(x0, x1), x1 - x0)
    # the path's time derivative is the target
    eps = 1e-3
    deriv = (interpolate(x0, x1, t + eps) - interpolate(x0, x1, t)) / eps
    torch.testing.assert_close(deriv, velocity_target(x0, x1), atol=2e-3, rtol=0)
    # min_sigma keeps some noise at t = 1
    torch.testing.assert_close(interpolate(x0, x1, torch.ones(3), 0.1), 0.1 * x0 + x1)
    torch.testing.assert_close(velocity_target(x0, x1, 0.1), x1 - 0.9 * x0)


def test_sample_t_is_logit_normal_and_reproducible_with_a_generator():
    t = sample_t(20000, torch.Generator().manual_seed(3))
    assert t.dtype == torch.float32 and ((t > 0) & (t < 1)).all()
    logit = torch.logit(t.double())
    assert abs(logit.mean().item()) < 0.03 and abs(logit.std().item() - 1) < 0.03
    assert torch.equal(t, sample_t(20000, torch.Generator().manual_seed(3)))
    shifted = sample_t(20000, torch.Generator().manual_seed(3), mean=1.0, std=0.5)
    torch.testing.assert_close(torch.logit(shifted.double()), 1.0 + 0.5 * logit, atol=1e-4, rtol=0)


def test_config_defaults_and_validation():
    c = FlowMatchingConfig()
    assert (c.min_sigma, c.num_steps, c.cfg_strength) == (0.0, 25, 4.5)
    assert (c.null_condition_probability, c.t_mean, c.t_std) == (0.1, 0.0, 1.0)
    with pytest.raises(ValueError, match="null_condition_probability"):
        FlowMatchingConfig(null_condition_probability=1.5)


# -- loss -----------------------------------------------------------------------------------
def test_loss_is_per_sample_mse_of_the_velocity_at_the_interpolated_point(tiny):
    x1, clip_f, sync_f, text_f = _features(tiny, 3)
    x0 = torch.randn_like(x1)
    t = torch.tensor([0.1, 0.5, 0.9])
    with torch.no_grad():
        out = flow_matching_loss(tiny, x1, clip_f, sync_f, text_f, t=t, x0=x0, reduction="none")
        pred = tiny(interpolate(x0, x1, t), clip_f, sync_f, text_f, t)
    want = (pred - (x1 - x0)).pow(2).mean(dim=(1, 2))
    torch.testing.assert_close(out.per_sample, want)
    torch.testing.assert_close(out.loss, want)
    assert torch.equal(out.t, t)
    with torch.no_grad():
        mean = flow_matching_loss(tiny, x1, clip_f, sync_f, text_f, t=t, x0=x0)
    torch.testing.assert_close(mean.loss, want.mean())


def test_loss_draws_t_and_noise_from_the_generator_deterministically(tiny):
    x1, clip_f, sync_f, text_f = _features(tiny, 2)
    with torch.no_grad():
        a = flow_matching_loss(tiny, x1, clip_f, sync_f, text_f,
                               rng=torch.Generator().manual_seed(7))
        b = flow_matching_loss(tiny, x1, clip_f, sync_f, text_f,
                               rng=torch.Generator().manual_seed(7))
        c = flow_matching_loss(tiny, x1, clip_f, sync_f, text_f,
                               rng=torch.Generator().manual_seed(8))
    assert torch.equal(a.per_sample, b.per_sample) and torch.equal(a.t, b.t)
    assert not torch.equal(a.t, c.t)


def test_loss_backpropagates_into_the_model(tiny):
    model = SelvaGenerator.from_variant("tiny_16k", duration=1.0)
    x1, clip_f, sync_f, text_f = _features(model, 2)
    out = flow_matching_loss(model, x1, None, sync_f, text_f,
                             rng=torch.Generator().manual_seed(0))
    out.loss.backward()
    grad = model.joint_blocks[0].latent_block.attn.qkv.weight.grad
    assert grad is not None and grad.abs().sum() > 0


# -- condition dropout ----------------------------------------------------------------------
def test_dropout_with_p1_gives_exactly_the_empty_features_and_p0_leaves_inputs(tiny):
    _, clip_f, sync_f, text_f = _features(tiny, 4)
    clip0, sync0, text0 = tiny.empty_conditions(4)
    all_dropped = drop_conditions(tiny, sync_f, text_f, clip_f, p=1.0)
    assert torch.equal(all_dropped.clip_f, clip0)
    assert torch.equal(all_dropped.sync_f, sync0)
    assert torch.equal(all_dropped.text_f, text0)
    assert all_dropped.video_dropped.all() and all_dropped.text_dropped.all()
    kept = drop_conditions(tiny, sync_f, text_f, clip_f, p=0.0)
    assert torch.equal(kept.clip_f, clip_f) and torch.equal(kept.sync_f, sync_f)
    assert torch.equal(kept.text_f, text_f)
    assert not kept.video_dropped.any() and not kept.text_dropped.any()


def test_dropout_replaces_video_and_text_independently_per_sample(tiny):
    _, clip_f, sync_f, text_f = _features(tiny, 64)
    clip0, sync0, text0 = tiny.empty_conditions(64)
    out = drop_conditions(tiny, sync_f, text_f, clip_f, p=0.5,
                          rng=torch.Generator().manual_seed(5))
    v, t = out.video_dropped, out.text_dropped
    assert (v & ~t).any() and (t & ~v).any()  # independent draws
    assert 10 < v.sum() < 54 and 10 < t.sum() < 54
    for i in range(64):
        assert torch.equal(out.clip_f[i], clip0[i] if v[i] else clip_f[i])
        assert torch.equal(out.sync_f[i], sync0[i] if v[i] else sync_f[i])
        assert torch.equal(out.text_f[i], text0[i] if t[i] else text_f[i])
    again = drop_conditions(tiny, sync_f, text_f, clip_f, p=0.5,
                            rng=torch.Generator().manual_seed(5))
    assert torch.equal(again.video_dropped, v) and torch.equal(again.text_dropped, t)


def test_dropout_without_clip_features_uses_the_null_clip_token(tiny):
    _, _, sync_f, text_f = _features(tiny, 2)
    out = drop_conditions(tiny, sync_f, text_f, None, p=0.0)
    assert torch.equal(out.clip_f, tiny.empty_conditions(2)[0])


# -- sampler --------------------------------------------------------------------------------
def test_batched_cfg_equals_two_pass_reference(tiny):
    x0, clip_f, sync_f, text_f = _features(tiny, 2, seed=1)
    neg = torch.randn(1, 77, tiny.cfg.text_dim, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        for negative in (None, neg):
            kw = dict(negative_text_f=negative, num_steps=5, cfg_strength=4.5)
            batched = euler_sample(tiny, x0, clip_f, sync_f, text_f, **kw)
            two_pass = euler_sample_two_pass(tiny, x0, clip_f, sync_f, text_f, **kw)
            torch.testing.assert_close(batched, two_pass, atol=1e-5, rtol=1e-5)
            cond_only = euler_sample(tiny, x0, clip_f, sync_f, text_f,
                                     negative_text_f=negative, num_steps=5, cfg_strength=1.0)
            assert (batched - cond_only).abs().max() > 1e-3  # guidance changes the result


def test_conditions_are_preprocessed_once_per_run_and_both_branches_share_each_forward(tiny):
    x0, clip_f, sync_f, text_f = _features(tiny, 2)
    with torch.inference_mode():
        with _CallCounter(tiny, "preprocess_conditions") as pre, \
                _CallCounter(tiny, "predict_flow") as flow:
            euler_sample(tiny, x0, clip_f, sync_f, text_f, num_steps=3, cfg_strength=4.5)
        assert pre.batches == [4]  # cond and uncond concatenated, once
        assert flow.batches == [4, 4, 4]  # one batched forward per step
        with _CallCounter(tiny, "preprocess_conditions") as pre, \
                _CallCounter(tiny, "predict_flow") as flow:
            euler_sample_two_pass(tiny, x0, clip_f, sync_f, text_f, num_steps=3)
        assert pre.batches == [2, 2] and flow.batches == [2] * 6


def test_cfg_strength_below_one_runs_only_the_conditional_branch(tiny):
    x0, clip_f, sync_f, text_f = _features(tiny, 2)
    with torch.inference_mode():
        with _CallCounter(tiny, "predict_flow") as flow:
            out = euler_sample(tiny, x0, clip_f, sync_f, text_f, num_steps=2, cfg_strength=0.5)
        assert flow.batches == [2, 2]
        cond = tiny.preprocess_conditions(clip_f, sync_f, text_f)
        x = x0 + 0.5 * tiny.predict_flow(x0, torch.zeros(2), cond)
        x = x + 0.5 * tiny.predict_flow(x, torch.full((2,), 0.5), cond)
    torch.testing.assert_close(out, x, atol=1e-6, rtol=1e-6)


class _AffineFlow:
    """Stub model: v = a (cond rows) or b (uncond rows) + t, so Euler has a closed form."""

    def __init__(self, a: float, b: float):
        self.a, self.b = a, b
        self.seq = get_variant("tiny_16k").sequence_lengths(1.0)

    def empty_conditions(self, batch, negative_text_f=None):
        z = torch.zeros(batch, 1, 1)
        return z, z, (z if negative_text_f is None else negative_text_f)

    def preprocess_conditions(self, clip_f, sync_f, text_f):
        m = text_f.reshape(text_f.shape[0], -1)[:, :1]  # 1 = cond, 0 = uncond marker
        return PreprocessedConditions(clip_f, sync_f, text_f, m, m)

    def predict_flow(self, x, t, cond):
        v = torch.where(cond.text_f_c > 0.5, self.a, self.b)
        return v[:, :, None].expand_as(x) + t[:, None, None]


def test_euler_uses_left_endpoints_of_a_uniform_grid_and_the_cfg_combination():
    model = _AffineFlow(a=2.0, b=-1.0)
    x0 = torch.zeros(3, 4, 2)
    ones = torch.ones(3, 1, 1)
    steps, w = 4, 3.0
    seen = []
    out = euler_sample(model, x0, ones, ones, ones, num_steps=steps, cfg_strength=w,
                       progress_callback=lambda i, n: seen.append((i, n)))
    mean_t = sum(i / steps for i in range(steps)) / steps  # 0, 1/4, 2/4, 3/4 -> 3/8
    want = w * 2.0 + (1 - w) * -1.0 + mean_t
    torch.testing.assert_close(out, torch.full_like(x0, want))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_progress_callback_can_interrupt_sampling(tiny):
    x0, clip_f, sync_f, text_f = _features(tiny, 1)

    def stop(step, total):
        if step == 2:
            raise KeyboardInterrupt

    with torch.inference_mode(), pytest.raises(KeyboardInterrupt):
        with _CallCounter(tiny, "predict_flow") as flow:
            euler_sample(tiny, x0, clip_f, sync_f, text_f, num_steps=10,
                         progress_callback=stop)
    assert len(flow.batches) == 2


@pytest.mark.slow
def test_small_16k_sampling_with_negative_text_matches_reference():
    case = load_case(GOLDEN_DIR / "gen_small_16k_sample.json")
    c = case.config
    variant = get_variant(c["variant"])
    with torch.device("meta"):
        model = SelvaGenerator(variant.generator,
                               variant.sequence_lengths(c["sequence_config"]["duration"]))
    model.load_state_dict(seeded_state_dict(case), strict=True, assign=True)
    model.eval()
    x = case.inputs()
    torch.testing.assert_close(model.empty_conditions(2)[0], x["clip_f"], atol=0, rtol=0)
    first = {}

    def keep_first(latent, t, cond):  # records step 0's batched [cond; uncond] prediction
        out = SelvaGenerator.predict_flow(model, latent, t, cond)
        first.setdefault("v", out)
        return out

    model.predict_flow = keep_first
    with torch.inference_mode():
        x1 = euler_sample(model, x["x0"], x["clip_f"], x["sync_f"], x["text_f"],
                          negative_text_f=x["negative_text_f"], num_steps=c["num_steps"],
                          cfg_strength=c["cfg_strength"])
    del model.predict_flow
    got = {
        "output.x1_normalized": x1,
        "output.x1_unnormalized": model.unnormalize(x1),
        "inter.step0_flow_cond": first["v"][:2],
        "inter.step0_flow_uncond": first["v"][2:],
    }
    for key, atol in case.spec["tolerance_atol"].items():
        err = (got[key] - case.tensors[key]).abs().max().item()
        assert err <= atol, f"{key}: max error {err:.3g} > atol {atol}"


def test_a_model_cast_to_bfloat16_samples_from_bfloat16_noise():
    model = SelvaGenerator.from_variant("tiny_16k", duration=1.0).eval()
    x0, clip_f, sync_f, text_f = _features(model, 1)
    with torch.inference_mode():
        ref = euler_sample(model, x0, clip_f, sync_f, text_f, num_steps=3)
        model.to(torch.bfloat16)
        low = euler_sample(model, x0.bfloat16(), clip_f.bfloat16(), sync_f.bfloat16(),
                           text_f.bfloat16(), num_steps=3)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low.float()).all()
    rel = (low.float() - ref).norm() / ref.norm()
    assert rel < 0.05, rel


# -- one objective ---------------------------------------------------------------------------
def test_the_trainers_loss_is_flow_matching_loss_with_its_dropout_masks(tiny):
    """The trainer (and validator, through flow_loss) compute exactly flow_matching_loss."""
    from selva_core.training.objective import (
        FeatureBatch,
        draw_examples,
        sync_features,
        target_latent,
        training_loss,
    )

    seq, cfg = tiny.seq, tiny.cfg
    g = torch.Generator().manual_seed(4)
    valid = torch.ones(4, seq.sync, dtype=torch.bool)
    valid[1, 5:] = False
    batch = FeatureBatch(
        latent_mean=torch.randn(4, seq.latent, cfg.latent_dim, generator=g),
        latent_std=torch.rand(4, seq.latent, cfg.latent_dim, generator=g),
        sync_f=torch.randn(4, seq.sync, cfg.sync_dim, generator=g), sync_valid=valid,
        text_f=torch.randn(4, cfg.text_seq_len, cfg.text_dim, generator=g),
        names=["a", "b", "c", "d"])
    draws = draw_examples([3, 1, 4, 1], (seq.latent, cfg.latent_dim), "logit_normal", 0.5)
    assert draws.drop_video.any() or draws.drop_text.any()  # the masks have work to do
    with torch.no_grad():
        ours = training_loss(tiny, tiny, batch, draws)
        want = flow_matching_loss(tiny, target_latent(tiny, batch, draws.eps), None,
                                  sync_features(tiny, batch), batch.text_f, t=draws.t,
                                  x0=draws.x0, reduction="none", video_drop=draws.drop_video,
                                  text_drop=draws.drop_text)
    assert torch.equal(ours, want.per_sample)


def test_loss_with_masks_equals_the_loss_on_explicitly_dropped_conditions(tiny):
    x1, clip_f, sync_f, text_f = _features(tiny, 4, seed=3)
    x0, t = torch.randn_like(x1), torch.tensor([0.2, 0.4, 0.6, 0.8])
    dropped = drop_conditions(tiny, sync_f, text_f, clip_f, p=0.5,
                              rng=torch.Generator().manual_seed(11))
    assert dropped.video_dropped.any() and dropped.text_dropped.any()
    with torch.no_grad():
        masked = flow_matching_loss(tiny, x1, clip_f, sync_f, text_f, t=t, x0=x0,
                                    video_drop=dropped.video_dropped,
                                    text_drop=dropped.text_dropped, reduction="none")
        explicit = flow_matching_loss(tiny, x1, dropped.clip_f, dropped.sync_f,
                                      dropped.text_f, t=t, x0=x0, reduction="none")
        kept = flow_matching_loss(tiny, x1, clip_f, sync_f, text_f, t=t, x0=x0,
                                  reduction="none")
    assert torch.equal(masked.per_sample, explicit.per_sample)
    assert not torch.equal(masked.per_sample, kept.per_sample)
