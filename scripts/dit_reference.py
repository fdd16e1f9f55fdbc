"""Executable reference of Wick's default denoiser and its training step, in PyTorch.

(Wick's copy of shared/reference/dit_reference.py, with `--sampler`: the evaluation sampler timed as
`wick bench --sampler` times it — Euler steps from t = 1 to 0, classifier-free guidance with the conditional
and unconditional halves in one batch of 2n, no autograd; and `--device cuda` for a GPU timing. Everything else
is unchanged.)

It pins the architecture of the built-in model (shapes, parameter names, initialisation, loss) and
measures PyTorch's CPU training throughput on exactly the same work, so Wick's candle trainer can be
compared with it side by side:

    python3 dit_reference.py --preset small --batch 64 --steps 20 --threads 2

prints one JSON line: {"framework": "pytorch", "preset": ..., "params": ..., "samples_per_s": ...}.
Data generation is excluded on purpose: the timed work is forward + backward + AdamW on fixed-shape
random batches, the same as `wick bench` is asked to time.

Initialisation (PyTorch's defaults, spelled out): every nn.Linear weight and bias ~ U(-1/sqrt(fan_in),
+1/sqrt(fan_in)); every nn.Embedding ~ N(0, 1); zeros where the code says so (each block's `ada`, the final
`final_ada` and `final_linear`, and every `adapter_gate`). LayerNorms here have no parameters. GELU is the
tanh approximation. Attention scale is 1/sqrt(head_dim).
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    # name: image side, patch, width, depth, heads, classes, layout slots
    "tiny": dict(image=32, patch=4, width=64, depth=2, heads=2, classes=4, slots=4),
    "small": dict(image=32, patch=4, width=96, depth=4, heads=4, classes=4, slots=4),
    "base": dict(image=32, patch=4, width=128, depth=6, heads=4, classes=4, slots=4),
}
MLP_RATIO = 4
FREQ_DIM = 256  # sinusoidal timestep features
BBOX_FREQS = 8  # Fourier frequencies per bbox coordinate
BOX_BIAS = 4.0  # adapter attention-logit bias: +BOX_BIAS inside a real slot's box, -BOX_BIAS outside


def timestep_features(t, dim=FREQ_DIM, max_period=10000.0):
    """Sinusoidal features of t in [0, 1], scaled by 1000 as in DiT: [cos | sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = (t[:, None] * 1000.0) * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def bbox_features(boxes):
    """boxes [B, K, 4] in [0, 1] -> [B, K, 4 * 2 * BBOX_FREQS]: sin/cos(2^f * pi * coord)."""
    freqs = (2.0 ** torch.arange(BBOX_FREQS, dtype=torch.float32)) * math.pi
    args = boxes[..., None] * freqs  # [B, K, 4, F]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1).flatten(2)


def sincos_pos_embed(width, grid):
    """Fixed 2-D sin-cos position embedding [grid*grid, width] (half for rows, half for columns)."""
    def one_dim(d, pos):
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        out = pos.reshape(-1)[:, None].double() * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([one_dim(width // 2, ys), one_dim(width // 2, xs)], dim=1).float()


def box_bias(boxes, box_classes, grid, null_class):
    """Attention-logit bias [B, grid*grid, K] for the adapter's cross-attention.

    An image token whose centre lies inside a real slot's box gets +BOX_BIAS towards that slot, a token
    outside it gets -BOX_BIAS; empty slots (class == null_class) get 0. So from the first step each token
    listens to the object that covers it, and the zero-initialised gate can learn quickly what to take from it.
    """
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    cx, cy = cx.reshape(1, -1, 1), cy.reshape(1, -1, 1)
    x0, y0, x1, y1 = (boxes[:, None, :, i] for i in range(4))
    inside = ((cx >= x0) & (cx <= x1) & (cy >= y0) & (cy <= y1)).float()
    real = (box_classes != null_class).float()[:, None, :]
    return BOX_BIAS * real * (2 * inside - 1)


def modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head attention; self-attention when ctx is None, else cross-attention to ctx."""

    def __init__(self, width, heads, cross=False):
        super().__init__()
        self.heads = heads
        if cross:
            self.q = nn.Linear(width, width)
            self.kv = nn.Linear(width, 2 * width)
        else:
            self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x, ctx=None, bias=None):
        b, n, w = x.shape
        h = self.heads
        if ctx is None:
            q, k, v = self.qkv(x).reshape(b, n, 3, h, w // h).permute(2, 0, 3, 1, 4)
        else:
            q = self.q(x).reshape(b, n, h, w // h).transpose(1, 2)
            k, v = self.kv(ctx).reshape(b, ctx.shape[1], 2, h, w // h).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) * (w // h) ** -0.5
        if bias is not None:  # [B, n, K], the same for every head
            att = att + bias[:, None]
        out = att.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, w))


class Block(nn.Module):
    """DiT block with adaLN-Zero, plus an optional zero-gated spatial adapter after self-attention:
    x + gate * cross_attention(norm(x), layout tokens, box bias), gate a zero-initialised scalar."""

    def __init__(self, width, heads, adapter):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(width, MLP_RATIO * width), nn.GELU(approximate="tanh"), nn.Linear(MLP_RATIO * width, width)
        )
        self.ada = nn.Linear(width, 6 * width)  # applied to silu(c); zero-initialised
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)
        if adapter:
            self.adapter_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
            self.adapter_attn = Attention(width, heads, cross=True)
            self.adapter_gate = nn.Parameter(torch.zeros(1))  # the gate: zero-initialised, raw (no tanh)
        else:
            self.adapter_attn = None

    def forward(self, x, c, layout, bias):
        s1, sc1, g1, s2, sc2, g2 = self.ada(F.silu(c)).chunk(6, dim=-1)
        x = x + g1[:, None] * self.attn(modulate(self.norm1(x), s1, sc1))
        if self.adapter_attn is not None:
            x = x + self.adapter_gate * self.adapter_attn(self.adapter_norm(x), layout, bias)
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), s2, sc2))


class Denoiser(nn.Module):
    """Rectified-flow velocity model v(x_t, t, class, layout) for RGB images in [-1, 1]."""

    def __init__(self, image, patch, width, depth, heads, classes, slots, adapter=True):
        super().__init__()
        self.patch, self.grid = patch, image // patch
        self.patch_embed = nn.Linear(3 * patch * patch, width)  # on (c, ph, pw)-flattened patches
        self.register_buffer("pos", sincos_pos_embed(width, self.grid), persistent=False)
        self.t_mlp = nn.Sequential(nn.Linear(FREQ_DIM, width), nn.SiLU(), nn.Linear(width, width))
        self.class_embed = nn.Embedding(classes + 1, width)  # last index = null class (guidance dropout)
        # Layout tokens: one per slot = MLP(Fourier(bbox)) + class embedding; empty slots use class index `classes`.
        self.box_mlp = nn.Sequential(nn.Linear(4 * 2 * BBOX_FREQS, width), nn.SiLU(), nn.Linear(width, width))
        self.layout_class_embed = nn.Embedding(classes + 1, width)
        self.blocks = nn.ModuleList(Block(width, heads, adapter) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Linear(width, 2 * width)
        self.final_linear = nn.Linear(width, 3 * patch * patch)
        for layer in (self.final_ada, self.final_linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x, t, y, boxes, box_classes):
        b, p, g = x.shape[0], self.patch, self.grid
        patches = x.reshape(b, 3, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, 3 * p * p)
        h = self.patch_embed(patches) + self.pos[None]
        c = self.t_mlp(timestep_features(t)) + self.class_embed(y)
        layout = self.box_mlp(bbox_features(boxes)) + self.layout_class_embed(box_classes)
        bias = box_bias(boxes, box_classes, g, self.class_embed.num_embeddings - 1)
        for block in self.blocks:
            h = block(h, c, layout, bias)
        shift, scale = self.final_ada(F.silu(c)).chunk(2, dim=-1)
        out = self.final_linear(modulate(self.final_norm(h), shift, scale))
        return out.reshape(b, g, g, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, 3, g * p, g * p)


def flow_matching_loss(model, x0, y, boxes, box_classes, generator=None):
    """Rectified flow: x_t = (1 - t) x0 + t eps, target v = eps - x0, t ~ logit-normal(0, 1)."""
    b = x0.shape[0]
    t = torch.sigmoid(torch.randn(b, generator=generator))
    eps = torch.randn(x0.shape, generator=generator)
    xt = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * eps
    return F.mse_loss(model(xt, t, y, boxes, box_classes), eps - x0)


def sample(model, noise, y, boxes, box_classes, null_class, steps, guidance):
    """Wick's sampler: x <- x - dt * v, v = u + guidance * (c - u) from one batch holding both halves."""
    n = noise.shape[0]
    guided = guidance != 1.0
    if guided:
        y_in = torch.cat([y, torch.full_like(y, null_class)])
        boxes_in, classes_in = torch.cat([boxes, boxes]), torch.cat([box_classes, box_classes])
    x, dt = noise, 1.0 / steps
    for i in range(steps):
        t_now = 1.0 - i * dt
        if guided:
            v = model(torch.cat([x, x]), torch.full((2 * n,), t_now), y_in, boxes_in, classes_in)
            cond, uncond = v[:n], v[n:]
            v = uncond + (cond - uncond) * guidance
        else:
            v = model(x, torch.full((n,), t_now), y, boxes, box_classes)
        x = x - v * dt
    return x.clamp(-1, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sampler", action="store_true", help="time the Euler sampler with guidance instead")
    ap.add_argument("--sampler-steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where the model, data and noise live")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type != "cpu":  # (on the CPU, as before: no factory-call hook in the timed loop)
        torch.set_default_device(device)  # every factory call below (parameters, inputs, noise) makes it there

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    cfg = PRESETS[args.preset]
    model = Denoiser(**cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    gen = torch.Generator(device=device).manual_seed(0)
    b, k = args.batch, cfg["slots"]
    x0 = torch.rand(b, 3, cfg["image"], cfg["image"], generator=gen) * 2 - 1
    y = torch.randint(0, cfg["classes"], (b,), generator=gen)
    boxes = torch.rand(b, k, 4, generator=gen)
    box_classes = torch.randint(0, cfg["classes"] + 1, (b, k), generator=gen)

    if args.sampler:
        noise = torch.randn(x0.shape, generator=gen)
        with torch.no_grad():
            for _ in range(args.warmup):
                sample(model, noise, y, boxes, box_classes, cfg["classes"], args.sampler_steps, args.guidance)
            start = time.perf_counter()
            for _ in range(args.steps):
                sample(model, noise, y, boxes, box_classes, cfg["classes"], args.sampler_steps, args.guidance)
            sync()
            secs = time.perf_counter() - start
        print(json.dumps({
            "framework": "pytorch",
            "mode": "sampler",
            "version": torch.__version__,
            "preset": args.preset,
            "batch": b,
            "threads": args.threads,
            "device": args.device,
            "sampler_steps": args.sampler_steps,
            "guidance": args.guidance,
            "steps_per_s": args.steps / secs,
            "samples_per_s": args.steps * b / secs,
        }))
        return

    def step():
        opt.zero_grad(set_to_none=True)
        loss = flow_matching_loss(model, x0, y, boxes, box_classes, gen)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    secs = time.perf_counter() - start
    print(json.dumps({
        "framework": "pytorch",
        "version": torch.__version__,
        "preset": args.preset,
        "batch": b,
        "threads": args.threads,
        "device": args.device,
        "params": sum(p.numel() for p in model.parameters()),
        "steps_per_s": args.steps / secs,
        "samples_per_s": args.steps * b / secs,
    }))


if __name__ == "__main__":
    main()
