"""MP-MAE: masked-token heads are exact, losses as specified (that every backend gives the reference backend's loss
and gradients: tests/test_backend_parity.py)."""


import pytest
import torch
import torch.nn.functional as F

from mmearth_kernels.models import MPMAE
from mmearth_kernels.models import losses as loss_fns
from mmearth_kernels.models.mpmae import PIXEL_TASKS


from _mpmae_helpers import IMPL, mpmae_model, targets


def test_masked_token_heads_equal_full_heads():
    """Computing pixel heads only at masked tokens gives exactly the loss of the full computation."""
    m = mpmae_model(tasks="pixel", loss_weighting="unweighted")
    x, t = torch.randn(2, 12, 56, 56), targets(2)
    mask, kept = m.random_mask(2, generator=torch.Generator().manual_seed(4))
    got = m(x, t, mask, kept)["losses"]
    feats = m.decode(x, mask, kept)["sentinel2"]
    sel = mask.flatten(1)
    for task, C in PIXEL_TASKS.items():
        full = m.pixel_heads[task](feats).flatten(2).transpose(1, 2)     # [B, 49, p*p*C], every token
        if task in ("dynamic_world", "esa_worldcover"):
            tgt = loss_fns.patchify(t[task][:, None].float(), 8).long()[sel]
            want = F.cross_entropy(full[sel].reshape(-1, C), tgt.reshape(-1), ignore_index=-1)
        else:
            tgt = torch.nan_to_num(loss_fns.patchify(t[task], 8)[sel])
            if task == "sentinel2":
                tgt = (tgt - tgt.mean(-1, keepdim=True)) / (tgt.var(-1, keepdim=True) + 1e-6).sqrt()
            per_patch = ((full[sel] - tgt) ** 2).mean(-1)
            want = per_patch.sum() / (per_patch != 0).sum()
        torch.testing.assert_close(got[task], want, rtol=1e-5, atol=1e-6, msg=task)


def test_shared_decoder_once_equals_per_task_copies():
    shared = mpmae_model()
    per_task = MPMAE("atto", impl=IMPL, decoder="per_task")
    state = {k: v for k, v in shared.state_dict().items() if not k.startswith("decoder.")}
    for task in per_task.tasks:
        for k, v in shared.decoder.state_dict().items():
            state[f"decoder.{task}.{k}"] = v
    per_task.load_state_dict(state)
    x, t = torch.randn(2, 12, 56, 56), targets(2)
    mask, kept = shared.random_mask(2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(shared(x, t, mask, kept)["loss"], per_task(x, t, mask, kept)["loss"])


def test_no_leakage_into_the_loss():
    m = mpmae_model()
    x, t = torch.randn(2, 12, 56, 56), targets(2)
    mask, kept = m.random_mask(2, generator=torch.Generator().manual_seed(3))
    hidden = mask.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, None].expand_as(x)
    x2 = x.clone()
    x2[hidden] = 100 * torch.randn(int(hidden.sum()))
    with torch.no_grad():
        assert torch.equal(m(x, t, mask, kept)["loss"], m(x2, t, mask, kept)["loss"])


def test_loss_functions():
    # norm_pix on a constant patch: no NaN; an all-ignored CE: 0, not NaN
    pred, const = torch.randn(3, 48), torch.full((3, 48), 2.0)
    assert torch.isfinite(loss_fns.masked_patch_mse(pred, const, norm_pix=True))
    assert loss_fns.masked_pixel_ce(torch.randn(2, 16 * 9), torch.full((2, 16), -1), 9) == 0
    assert loss_fns.class_ce(torch.randn(4, 14), torch.full((4,), -1)) == 0
    logits, idx = torch.randn(4, 14), torch.tensor([3, 0, 13, 5])
    onehot = torch.nn.functional.one_hot(idx, 14).to(torch.uint8)
    onehot[3] = 0  # an all-zero row is ignored
    want = loss_fns.class_ce(logits, torch.tensor([3, 0, 13, -1]))
    torch.testing.assert_close(loss_fns.class_ce(logits, onehot), want)
    # MSE drops NaN targets
    p, tg = torch.tensor([[1.0, 2.0]]), torch.tensor([[float("nan"), 4.0]])
    assert loss_fns.vector_mse(p, tg) == 4.0
    assert loss_fns.vector_mse(p, torch.full_like(tg, float("nan"))) == 0
    # nodata="ignore" leaves NaN elements out of the patch mean
    assert loss_fns.masked_patch_mse(torch.zeros(1, 2), torch.tensor([[float("nan"), 3.0]]), nodata="ignore") == 9.0
    assert loss_fns.masked_patch_mse(torch.zeros(1, 2), torch.tensor([[float("nan"), 3.0]]), nodata="zero") == 4.5
    # uncertainty weighting: sum exp(-s) L + s, zero-loss terms dropped
    losses, s = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([0.5, 3.0, -1.0])
    want = torch.exp(torch.tensor(-0.5)) * 2 + 0.5 + torch.exp(torch.tensor(1.0)) * 1 - 1.0
    torch.testing.assert_close(loss_fns.uncertainty_weighting(losses, s), want)
    # patchify / unpatchify round trip, (row, column, channel) order inside a patch
    img = torch.randn(2, 3, 16, 16)
    pt = loss_fns.patchify(img, 8)
    assert torch.equal(loss_fns.unpatchify(pt, 8, 3), img)
    assert torch.equal(pt[0, 1, :3], img[0, :, 0, 8])  # patch (0, 1), pixel (0, 0), channels 0..2


def test_task_sets_and_sizes():
    assert list(MPMAE("atto", tasks="s2").pixel_heads) == ["sentinel2"]
    assert len(MPMAE("atto", tasks="image").pixel_heads) == 0
    m = MPMAE("atto")
    n = sum(p.numel() for p in m.parameters())
    assert 7.4e6 < n < 7.8e6, n  # about 7.6M for atto at patch 8 (MMEarth §2.6)
    assert m.log_vars.shape == (12,) and m.log_vars.abs().sum() == 0
    assert 0.8 < m.proj.weight.std() < 1.2 and m.mask_token.std() < 0.05  # the released std-1.0 quirk
    std = MPMAE("atto", init="standard").proj.weight.std()
    assert std < 0.05


@pytest.mark.parametrize("kwargs, match", [
    (dict(tasks="everything"), r"unknown task\(s\) \[.everything.\]"),
    (dict(tasks=["sentinel3"]), "unknown task"),
    (dict(decoder="unet"), "decoder must be"),
    (dict(loss_weighting="gradnorm"), "loss_weighting must be"),
    (dict(nodata="drop"), "nodata must be"),
    (dict(decoder_dim=0), "decoder_dim must be a positive int"),
    (dict(decoder_dim=-3), "decoder_dim must be a positive int"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MPMAE("atto", **kwargs)


def test_missingtargets():
    m = MPMAE("atto", tasks="image")
    with pytest.raises(ValueError, match="targets lack"):
        m(torch.randn(1, 12, 56, 56), {"era5": torch.randn(1, 12)})
