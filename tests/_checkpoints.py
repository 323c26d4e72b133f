"""Checkpoints in the released sparse (MinkowskiEngine) layout, built from the layout's definition, and files
written the way upstream's save_model writes them."""

import argparse

import torch


def me_kernel(weight, depthwise=False):
    """ME layout by its definition: offset index k = kh + K * kw (H fastest); [K*K, Cin, Cout] or [K*K, C]."""
    cout, cin, K, _ = weight.shape
    if depthwise:
        out = torch.empty(K * K, cout)
        for kh in range(K):
            for kw in range(K):
                out[kh + K * kw] = weight[:, 0, kh, kw]
        return out
    out = torch.empty(K * K, cin, cout)
    for kh in range(K):
        for kw in range(K):
            out[kh + K * kw] = weight[:, :, kh, kw].t()
    return out[0] if K == 1 else out  # ME keeps a kernel of volume 1 as [Cin, Cout]


def to_me_checkpoint(m):
    """A state_dict in the released sparse FCMAE layout (encoder.* + decoder keys), built from m."""
    sd = {}
    st = m.stem
    b = lambda t: t.reshape(1, -1)  # noqa: E731  (ME biases are [1, C])
    if st.kind == "mmearth":
        sd["encoder.initial_conv.0.kernel"] = me_kernel(st.conv.weight)
        sd["encoder.initial_conv.0.bias"] = b(st.conv.bias)
        sd["encoder.initial_conv.1.ln.weight"], sd["encoder.initial_conv.1.ln.bias"] = st.norm1.weight, st.norm1.bias
        sd["encoder.stem.0.kernel"] = me_kernel(st.dwconv.weight, depthwise=True)
        sd["encoder.stem.0.bias"] = b(st.dwconv.bias)
        sd["encoder.stem.1.ln.weight"], sd["encoder.stem.1.ln.bias"] = st.norm2.weight, st.norm2.bias
    else:
        sd["encoder.stem_orig.0.kernel"], sd["encoder.stem_orig.0.bias"] = me_kernel(st.conv.weight), b(st.conv.bias)
        sd["encoder.stem_orig.1.ln.weight"], sd["encoder.stem_orig.1.ln.bias"] = st.norm.weight, st.norm.bias
    for i in range(1, 4):
        ds = m.downsample[i]
        sd[f"encoder.downsample_layers.{i - 1}.0.ln.weight"] = ds.norm.weight
        sd[f"encoder.downsample_layers.{i - 1}.0.ln.bias"] = ds.norm.bias
        sd[f"encoder.downsample_layers.{i - 1}.1.kernel"] = me_kernel(ds.conv.weight)
        sd[f"encoder.downsample_layers.{i - 1}.1.bias"] = b(ds.conv.bias)
    for i, stage in enumerate(m.stages):
        for j, blk in enumerate(stage):
            p = f"encoder.stages.{i}.{j}."
            sd[p + "dwconv.kernel"] = me_kernel(blk.dwconv.weight, depthwise=True)
            sd[p + "dwconv.bias"] = b(blk.dwconv.bias)
            sd[p + "norm.ln.weight"], sd[p + "norm.ln.bias"] = blk.norm.weight, blk.norm.bias
            sd[p + "pwconv1.linear.weight"], sd[p + "pwconv1.linear.bias"] = blk.pwconv1.weight, blk.pwconv1.bias
            sd[p + "grn.gamma"], sd[p + "grn.beta"] = blk.grn.gamma.reshape(1, -1), blk.grn.beta.reshape(1, -1)
            sd[p + "pwconv2.linear.weight"], sd[p + "pwconv2.linear.bias"] = blk.pwconv2.weight, blk.pwconv2.bias
    sd["proj.weight"] = torch.randn(512, m.dims[-1], 1, 1)
    sd["mask_token"] = torch.zeros(1, 512, 1, 1)
    return {k: v.detach().clone() for k, v in sd.items()}


def upstream_args(**overrides) -> argparse.Namespace:
    """The kind of argparse.Namespace upstream's main_pretrain.py saves as ``args`` (plain option values)."""
    args = dict(batch_size=256, epochs=200, accum_iter=16, model="convnextv2_atto", input_size=56, patch_size=8,
                mask_ratio=0.6, norm_pix_loss=True, decoder_depth=1, decoder_embed_dim=512, weight_decay=0.05,
                lr=None, blr=1.5e-4, min_lr=0.0, warmup_epochs=40, data_path="/data/data_1M_v001_64",
                output_dir="./results", device="cuda", seed=0, resume="", start_epoch=0, num_workers=10,
                pin_mem=True, world_size=8, local_rank=-1, dist_on_itp=False, dist_url="env://",
                use_orig_stem=False, loss_aggr="uncertainty", distributed=True, gpu=0, rank=0)
    args.update(overrides)
    return argparse.Namespace(**args)


def save_as_upstream(path, encoder, **args_overrides) -> dict:
    """``{"model", "optimizer", "epoch", "scaler", "args"}``, as upstream's save_model writes it."""
    sd = to_me_checkpoint(encoder)
    params = [torch.nn.Parameter(v.clone()) for v in sd.values()]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95))
    sum(p.sum() for p in params).backward()
    opt.step()
    ck = {"model": sd, "optimizer": opt.state_dict(), "epoch": 199,
          "scaler": torch.amp.GradScaler("cpu", enabled=True).state_dict(), "args": upstream_args(**args_overrides)}
    torch.save(ck, path)
    return ck
