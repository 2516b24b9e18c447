"""
The PyTorch twin of Tessera's training step (train/step.ts), the peer that bench/train-step.ts runs
in the same benchmark run: EDM's SongUNet (Karras et al. 2022, training/networks.py) built from the
same config, Patch Diffusion's two coordinate channels (Wang et al. 2023, Patch_EDMPrecond), EDM
preconditioning (Table 1), EDM's loss, non-finite gradient replacement, optional global-norm
clipping, Adam with EDM's learning-rate ramp-up, and the EMA of the params with its ramp-up.
Same cases, batches and data as bench/train-step.ts; prints one JSON line.

    python3 bench/torch_train_step.py --case patchR/4 [--config train/configs/demo.json] [--steps 3] [--warmup 5]

The config is resolved by train/config.ts (defaults, checks) through node, so both sides read the
same numbers. Needs Debian's python3-torch (1.13): `npm run bench:setup`.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_config(path):
    """The config as train/config.ts resolves it (defaults applied, derived fields filled)."""
    code = (
        "const { loadConfig } = await import('./train/config.ts');"
        "const c = await loadConfig(process.argv[1]);"
        "if (c._tag === 'Left') { console.error(c.left.message); process.exit(1); }"
        "console.log(JSON.stringify(c.right));"
    )
    out = subprocess.run(['node', '--import', 'tsx', '--input-type=module', '-e', code, os.path.abspath(path)],
                         cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


# ---------------------------------------------------------------- EDM's layers (training/networks.py)

def weight_init(shape, mode, fan_in, fan_out):
    if mode == 'xavier_uniform': return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == 'xavier_normal': return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == 'kaiming_uniform': return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == 'kaiming_normal': return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f'invalid init mode {mode}')


class Linear(torch.nn.Module):
    def __init__(self, in_features, out_features, bias=True, init_mode='kaiming_normal', init_weight=1, init_bias=0):
        super().__init__()
        self.in_features = in_features
        kw = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = torch.nn.Parameter(weight_init([out_features, in_features], **kw) * init_weight)
        self.bias = torch.nn.Parameter(weight_init([out_features], **kw) * init_bias) if bias else None

    def forward(self, x):
        x = x @ self.weight.t()
        return x if self.bias is None else x + self.bias


class Conv2d(torch.nn.Module):
    """A k x k "same" convolution with optional up/downsampling by a separable filter (kernel 0: resampling only)."""

    def __init__(self, in_channels, out_channels, kernel, bias=True, up=False, down=False, resample_filter=(1, 1),
                 fused_resample=False, init_mode='kaiming_normal', init_weight=1, init_bias=0):
        assert not (up and down)
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        kw = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.weight = torch.nn.Parameter(weight_init([out_channels, in_channels, kernel, kernel], **kw) * init_weight) if kernel else None
        self.bias = torch.nn.Parameter(weight_init([out_channels], **kw) * init_bias) if kernel and bias else None
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f = f.ger(f).unsqueeze(0).unsqueeze(1) / f.sum().square()
        self.register_buffer('resample_filter', f if up or down else None)

    def forward(self, x):
        w, b, f = self.weight, self.bias, self.resample_filter
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.fused_resample and self.up and w is not None:
            x = F.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=max(f_pad - w_pad, 0))
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.up:
                x = F.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad)
            if self.down:
                x = F.conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        return x if b is None else x + b.reshape(1, -1, 1, 1)


class GroupNorm(torch.nn.Module):
    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        return F.group_norm(x, num_groups=self.num_groups, weight=self.weight, bias=self.bias, eps=self.eps)


class UNetBlock(torch.nn.Module):
    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False, attention=False, num_heads=None,
                 channels_per_head=64, dropout=0.0, skip_scale=1.0, eps=1e-5, resample_filter=(1, 1), resample_proj=False,
                 adaptive_scale=True, init=None, init_zero=None, init_attn=None):
        super().__init__()
        init = init or {}
        init_zero = init_zero or dict(init_weight=0)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_heads = 0 if not attention else num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down, resample_filter=resample_filter, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, up=up, down=down, resample_filter=resample_filter, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1, **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x, emb):
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb).unsqueeze(2).unsqueeze(3)
        if self.adaptive_scale:
            scale, shift = params.chunk(chunks=2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale
        if self.num_heads:
            n, c = x.shape[0], x.shape[1]
            q, k, v = self.qkv(self.norm2(x)).reshape(n * self.num_heads, c // self.num_heads, 3, -1).unbind(2)
            w = torch.einsum('ncq,nck->nqk', q, k / math.sqrt(k.shape[1])).softmax(dim=2)
            a = torch.einsum('nqk,nck->ncq', w, v)
            x = (self.proj(a.reshape(*x.shape)) + x) * self.skip_scale
        return x


class PositionalEmbedding(torch.nn.Module):
    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x):
        freqs = torch.arange(start=0, end=self.num_channels // 2, dtype=torch.float32)
        freqs = (1 / self.max_positions) ** (freqs / (self.num_channels // 2 - (1 if self.endpoint else 0)))
        x = x.ger(freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(torch.nn.Module):
    def __init__(self, num_channels, scale=16):
        super().__init__()
        self.register_buffer('freqs', torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        x = x.ger(2 * np.pi * self.freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


class SongUNet(torch.nn.Module):
    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0, model_channels=128,
                 channel_mult=(1, 2, 2, 2), channel_mult_emb=4, num_blocks=4, attn_resolutions=(16,), dropout=0.10,
                 embedding_type='positional', channel_mult_noise=1, encoder_type='standard', decoder_type='standard',
                 resample_filter=(1, 1)):
        super().__init__()
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode='xavier_uniform')
        init_zero = dict(init_mode='xavier_uniform', init_weight=1e-5)
        init_attn = dict(init_mode='xavier_uniform', init_weight=math.sqrt(0.2))
        block_kwargs = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                            resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
                            init=init, init_zero=init_zero, init_attn=init_attn)

        # Mapping.
        self.map_noise = PositionalEmbedding(noise_channels, endpoint=True) if embedding_type == 'positional' else FourierEmbedding(noise_channels)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # Encoder.
        self.enc = torch.nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f'{res}x{res}_conv'] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f'{res}x{res}_down'] = UNetBlock(cout, cout, down=True, **block_kwargs)
                if encoder_type == 'skip':
                    self.enc[f'{res}x{res}_aux_down'] = Conv2d(caux, caux, kernel=0, down=True, resample_filter=resample_filter)
                    self.enc[f'{res}x{res}_aux_skip'] = Conv2d(caux, cout, kernel=1, **init)
                if encoder_type == 'residual':
                    self.enc[f'{res}x{res}_aux_residual'] = Conv2d(caux, cout, kernel=3, down=True, resample_filter=resample_filter, fused_resample=True, **init)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f'{res}x{res}_block{idx}'] = UNetBlock(cin, cout, attention=res in attn_resolutions, **block_kwargs)
        skips = [block.out_channels for name, block in self.enc.items() if 'aux' not in name]

        # Decoder.
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f'{res}x{res}_in0'] = UNetBlock(cout, cout, attention=True, **block_kwargs)
                self.dec[f'{res}x{res}_in1'] = UNetBlock(cout, cout, **block_kwargs)
            else:
                self.dec[f'{res}x{res}_up'] = UNetBlock(cout, cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = idx == num_blocks and res in attn_resolutions
                self.dec[f'{res}x{res}_block{idx}'] = UNetBlock(cin, cout, attention=attn, **block_kwargs)
            if decoder_type == 'skip' or level == 0:
                if decoder_type == 'skip' and level < len(channel_mult) - 1:
                    self.dec[f'{res}x{res}_aux_up'] = Conv2d(out_channels, out_channels, kernel=0, up=True, resample_filter=resample_filter)
                self.dec[f'{res}x{res}_aux_norm'] = GroupNorm(cout, eps=1e-6)
                self.dec[f'{res}x{res}_aux_conv'] = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # swap sin/cos
        if self.map_label is not None:
            labels = class_labels if class_labels is not None else torch.zeros([1, self.map_label.in_features])
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer0(emb))
        emb = F.silu(self.map_layer1(emb))

        skips = []
        aux = x
        for name, block in self.enc.items():
            if 'aux_down' in name:
                aux = block(aux)
            elif 'aux_skip' in name:
                x = skips[-1] = x + block(aux)
            elif 'aux_residual' in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        aux = tmp = None
        for name, block in self.dec.items():
            if 'aux_up' in name:
                aux = block(aux)
            elif 'aux_norm' in name:
                tmp = block(x)
            elif 'aux_conv' in name:
                tmp = block(F.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux


class PatchPrecond(torch.nn.Module):
    """D(x; sigma) = c_skip x + c_out F([c_in x, coords]; c_noise) (EDM Table 1; Patch_EDMPrecond)."""

    def __init__(self, img_resolution, img_channels, use_coords, sigma_data, label_dim, **network):
        super().__init__()
        self.use_coords, self.sigma_data = use_coords, sigma_data
        self.model = SongUNet(img_resolution, img_channels + (2 if use_coords else 0), img_channels, label_dim=label_dim, **network)

    def forward(self, x, sigma, coords=None):
        sigma = sigma.reshape(-1, 1, 1, 1)
        sd = self.sigma_data
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        x_in = c_in * x if coords is None else torch.cat([c_in * x, coords], dim=1)
        return c_skip * x + c_out * self.model(x_in, c_noise.flatten())


def patch_coordinates(height, width, top, left, h, w):
    """Patch Diffusion's [x, y] channels: (index / (R - 1) - 0.5) * 2 over the full image (models/patch.ts)."""
    ys = ((top.float().reshape(-1, 1, 1) + torch.arange(h).reshape(1, h, 1).float().expand(-1, h, w)) / (height - 1) - 0.5) * 2
    xs = ((left.float().reshape(-1, 1, 1) + torch.arange(w).reshape(1, 1, w).float().expand(-1, h, w)) / (width - 1) - 0.5) * 2
    return torch.stack([xs, ys], dim=1)


def parameter_count(net):
    """Trained parameters, plus the Fourier embedding's freqs buffer, which Tessera keeps among its params (frozen)."""
    n = sum(p.numel() for p in net.parameters())
    return n + sum(b.numel() for name, b in net.named_buffers() if name.endswith('map_noise.freqs'))


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument('--case', default='patchR', choices=['patchR', 'patchR/2', 'patchR/4', 'edm'])
    ap.add_argument('--config', default=os.path.join(ROOT, 'train', 'configs', 'demo.json'))
    ap.add_argument('--steps', type=int, default=3)
    ap.add_argument('--warmup', type=int, default=5, help='untimed steps between the first and the timed ones')
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)

    config = resolve_config(args.config)
    m, t = config['model'], config['train']
    res = m['img_resolution']
    height, width = (res, res) if isinstance(res, int) else res
    R, base = height, t['batch_size']
    size, batch, kind = {'patchR': (R, base, 'patch'), 'patchR/2': (R // 2, 2 * base, 'patch'),
                         'patchR/4': (R // 4, 4 * base, 'patch'), 'edm': (R, base, 'edm')}[args.case]
    use_coords = kind == 'patch' and m['use_coords']

    net = PatchPrecond(height, m['img_channels'], use_coords, t['sigma_data'], m['label_dim'],
                       model_channels=m['model_channels'], channel_mult=m['channel_mult'], channel_mult_emb=m['channel_mult_emb'],
                       num_blocks=m['num_blocks'], attn_resolutions=m['attn_resolutions'], dropout=m['dropout'],
                       embedding_type=m['embedding_type'], channel_mult_noise=m['channel_mult_noise'],
                       encoder_type=m['encoder_type'], decoder_type=m['decoder_type'], resample_filter=m['resample_filter'],
                       augment_dim=m['augment_dim']).train()
    ema = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.Adam(net.parameters(), lr=t['lr'], betas=(0.9, 0.999), eps=1e-8)
    images_seen = 0
    replaced = torch.zeros([])

    # The same batch as bench/train-step.ts.
    c = m['img_channels']
    images = torch.sin(torch.arange(batch * c * size * size, dtype=torch.float32) * 0.37).reshape(batch, c, size, size)
    top = torch.tensor([(i * 5) % (R - size + 1) for i in range(batch)])
    left = torch.tensor([(i * 3) % (R - size + 1) for i in range(batch)])
    p_mean, p_std, sd = t['P_mean'], t['P_std'], t['sigma_data']

    def step():
        nonlocal images_seen, replaced
        coords = patch_coordinates(height, width, top, left, size, size) if use_coords else None
        # EDM's loss: ln(sigma) ~ N(P_mean, P_std^2), weight (sigma^2 + sd^2) / (sigma sd)^2, summed over
        # pixels and averaged over samples.
        sigma = (torch.randn([batch, 1, 1, 1]) * p_std + p_mean).exp()
        weight = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
        noisy = images + torch.randn_like(images) * sigma
        loss = (weight * (net(noisy, sigma, coords) - images) ** 2).sum() / batch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in net.parameters():
            finite = torch.isfinite(p.grad)
            replaced = replaced + (~finite).sum()
            p.grad = torch.where(finite, p.grad, torch.zeros([]))
        if t.get('grad_clip') is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), t['grad_clip'])
        lr = t['lr'] * min(images_seen / t['lr_rampup_images'], 1) if t['lr_rampup_images'] > 0 else t['lr']
        for g in opt.param_groups:
            g['lr'] = lr
        opt.step()
        # EDM's EMA, with the count before this batch: beta = 0.5^(batch / min(halflife, seen * ratio)).
        halflife = min(t['ema_halflife_images'], images_seen * t['ema_rampup_ratio'])
        beta = 0.5 ** (batch / max(halflife, 1e-8))
        with torch.no_grad():
            for e, p in zip(ema, net.parameters()):
                e.copy_(p.lerp(e, beta))
        images_seen += batch
        return loss.item()

    times = []
    for i in range(args.warmup + args.steps + 1):
        t0 = time.perf_counter()
        step()
        if i == 0 or i > args.warmup:
            times.append((time.perf_counter() - t0) * 1000)
    step_ms = statistics.median_low(times[1:]) if len(times) > 1 else times[0]
    print(json.dumps({'case': args.case, 'imagesPerS': 1000 * batch / step_ms, 'stepMs': step_ms, 'firstMs': times[0],
                      'params': parameter_count(net), 'threads': torch.get_num_threads(), 'torch': torch.__version__}))


if __name__ == '__main__':
    sys.exit(main())
