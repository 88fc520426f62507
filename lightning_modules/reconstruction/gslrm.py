"""GS-LRM: posed views -> per-pixel 3D Gaussians (FaceLift's layout and math, reimplemented).

Per input pixel the network sees 9 channels: RGB scaled to [-1, 1], the unit ray direction and the ray's nearest
point to the world origin (``geometry.rays``). Views are cut into ``patch x patch`` patches (channels innermost
within a patch), embedded by a bias-free linear layer and concatenated after ``num_global_tokens`` learned tokens.
A stack of bias-free pre-LN transformer blocks (fused qkv, ``scaled_dot_product_attention``, GELU MLP x4) mixes all
views. Each image token decodes to ``patch**2`` pixel-aligned Gaussians; each global token to one free Gaussian.

Parameter names equal FaceLift's (``patch_embedder.1.weight``, ``transformer_layers.N.attn.to_qkv.weight``, ...), so
a released state dict loads with ``strict=True`` (see ``tools.convert``).

Gaussian parameters per token/pixel (14 at SH degree 0): xyz 3 | SH 3 | scale 3 | rotation 4 | opacity 1, with
FaceLift's activations: pixel-aligned xyz = o + t d where t = (2 sigmoid(mean(xyz) + bias) - 1) * 1.8 + (-o.d)
(a bounded depth around the ray's nearest point to the origin), clipped to [-clip, clip] in training;
scale = exp(min(s - 2.3, -1.2)); opacity = sigmoid(a - 2); rotation normalized (w, x, y, z);
color = clamp(C0 * sh + 0.5, 0, 1).

Example:
    >>> import torch
    >>> net = GSLRM(GSLRMConfig(width=64, depth=2, head_dim=16, image_size=16))
    >>> c2w = torch.eye(4).expand(1, 2, 4, 4).clone(); c2w[..., 2, 3] = -2.7
    >>> K = torch.tensor([16.0, 16.0, 8.0, 8.0]).expand(1, 2, 4)
    >>> g = net(torch.rand(1, 2, 3, 16, 16), c2w, K)
    >>> g.means.shape, g.colors.shape
    (torch.Size([1, 514, 3]), torch.Size([1, 514, 3]))
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from geometry.rays import nearest_point_to_origin, pixel_rays
from geometry.render import SH_C0, Gaussians


@dataclasses.dataclass
class GSLRMConfig:
    """Size and activation constants of the network (FaceLift defaults)."""

    image_size: int = 512
    patch_size: int = 8
    in_channels: int = 9
    width: int = 1024
    depth: int = 24
    head_dim: int = 64
    mlp_ratio: int = 4
    num_global_tokens: int = 2
    sh_degree: int = 0
    depth_range: float = 1.8  # half-width of the depth interval around the nearest point
    depth_preact_bias: float = 0.0
    scale_bias: float = -2.3
    scale_max_log: float = -1.2
    opacity_bias: float = -2.0
    clip_xyz: float | None = 1.0  # |xyz| bound in training (FaceLift's clip_xyz); None: off
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.sh_degree != 0:  # a network with more bands would train outputs that no render ever shows
            raise ValueError(f"GS-LRM sh_degree {self.sh_degree}: only 0 is supported (one RGB colour per Gaussian, "
                             "as FaceLift's GS-LRM; the rasterizers take no higher SH bands)")

    @property
    def gaussian_dim(self) -> int:
        return 3 + 3 * (self.sh_degree + 1) ** 2 + 3 + 4 + 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GSLRMConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"GSLRMConfig: unknown keys {sorted(unknown)}")
        return cls(**d)


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class Patchify(nn.Module):
    """[B, V, H, W, C] channel-last pixels -> [B, V * h * w, p * p * C] tokens (row-major patches, C innermost)."""

    def __init__(self, patch_size: int):
        super().__init__()
        self.p = patch_size

    def forward(self, x: Tensor) -> Tensor:
        b, v, hh, ww, c = x.shape
        p = self.p
        x = x.reshape(b, v, hh // p, p, ww // p, p, c).permute(0, 1, 2, 4, 3, 5, 6)
        return x.reshape(b, v * (hh // p) * (ww // p), p * p * c)


class SelfAttention(nn.Module):
    """Multi-head self-attention, fused bias-free qkv projection, SDPA kernel (flash / cuDNN on GPU)."""

    def __init__(self, width: int, head_dim: int):
        super().__init__()
        if width % head_dim:
            raise ValueError(f"width {width} must be divisible by head_dim {head_dim}")
        self.heads, self.head_dim = width // head_dim, head_dim
        self.to_qkv = nn.Linear(width, 3 * width, bias=False)
        self.fc = nn.Linear(width, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, L, D] -> [B, L, D]."""
        b, n, d = x.shape
        q, k, v = self.to_qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, L, Dh]
        return self.fc(out.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, width: int, ratio: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, width * ratio, bias=False), nn.GELU(),
                                 nn.Linear(width * ratio, width, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


class TransformerBlock(nn.Module):
    """Bias-free pre-LN block: x + attn(ln1(x)); x + mlp(ln2(x))."""

    def __init__(self, width: int, head_dim: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, bias=False)
        self.norm2 = nn.LayerNorm(width, bias=False)
        self.attn = SelfAttention(width, head_dim)
        self.mlp = MLP(width, mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GlobalGaussianHead(nn.Module):
    """Global tokens -> one free Gaussian each (LayerNorm + linear, FaceLift's ``gaussian_upsampler``)."""

    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.layernorm = nn.LayerNorm(width, bias=False)
        self.linear = nn.Linear(width, out_dim, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.linear(self.layernorm(tokens))


def posed_pixels(images: Tensor, c2w: Tensor, fxfycxcy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Network input per pixel and its rays.

    Args:
        images [B, V, 3, H, W] in [0, 1]; c2w [B, V, 4, 4]; fxfycxcy [B, V, 4].
    Returns:
        pixels [B, V, H, W, 9] = (2 rgb - 1, ray dir, nearest point to origin), origins and dirs [B, V, H, W, 3].
    """
    h, w = images.shape[-2:]
    origins, dirs = pixel_rays(c2w.float(), fxfycxcy.float(), h, w)
    nearest = nearest_point_to_origin(origins, dirs)
    rgb = images.float().permute(0, 1, 3, 4, 2) * 2.0 - 1.0
    return torch.cat([rgb, dirs, nearest], dim=-1), origins, dirs


class GSLRM(nn.Module):
    """The GS-LRM network. ``forward(images, c2w, fxfycxcy) -> Gaussians`` (see module docstring)."""

    def __init__(self, config: GSLRMConfig | None = None):
        super().__init__()
        cfg = self.config = config or GSLRMConfig()
        d, p = cfg.width, cfg.patch_size
        self.patch_embedder = nn.Sequential(Patchify(p), nn.Linear(cfg.in_channels * p * p, d, bias=False))
        self.gaussian_position_embeddings = nn.Parameter(torch.empty(cfg.num_global_tokens, d))
        self.input_layer_norm = nn.LayerNorm(d, bias=False)
        self.transformer_layers = nn.ModuleList(
            TransformerBlock(d, cfg.head_dim, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.gaussian_upsampler = GlobalGaussianHead(d, cfg.gaussian_dim)
        self.pixel_gaussian_decoder = nn.Sequential(nn.LayerNorm(d, bias=False),
                                                    nn.Linear(d, p * p * cfg.gaussian_dim, bias=False))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.apply(_init_linear)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                m.reset_parameters()
        nn.init.trunc_normal_(self.gaussian_position_embeddings, std=0.02)

    # ---- transformer --------------------------------------------------------------------------------------------
    def encode(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """pixels [B, V, H, W, C] -> (global tokens [B, G, D], image tokens [B, V*h*w, D]) after the transformer."""
        b = pixels.shape[0]
        tokens = self.patch_embedder(pixels.to(self.patch_embedder[1].weight.dtype))
        glob = self.gaussian_position_embeddings.to(tokens.dtype).expand(b, -1, -1)
        x = self.input_layer_norm(torch.cat([glob, tokens], dim=1))
        for block in self.transformer_layers:
            if self.config.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        g = self.config.num_global_tokens
        return x[:, :g], x[:, g:]

    # ---- heads ----------------------------------------------------------------------------------------------------
    def decode(self, glob: Tensor, img: Tensor) -> tuple[Tensor, Tensor]:
        """Raw parameters: global [B, G, P], pixel-aligned [B, V*H*W, P] in (view, patch row, patch col, py, px).

        The heads run in the weights' precision whatever the autocast: under bf16-mixed, depths and colours would
        otherwise come from bf16's 8-bit mantissa (a depth step of ~0.3 px at 128 px)."""
        b = img.shape[0]
        dtype = self.pixel_gaussian_decoder[1].weight.dtype
        with torch.autocast(device_type=img.device.type, enabled=False):
            glob, img = self.gaussian_upsampler(glob.to(dtype)), self.pixel_gaussian_decoder(img.to(dtype))
        return glob.float(), img.float().reshape(b, -1, self.config.gaussian_dim)

    def pixel_xyz(self, raw_xyz: Tensor, origins: Tensor, dirs: Tensor) -> Tensor:
        """Pixel-aligned centres on each pixel's ray. raw_xyz, origins, dirs [B, N, 3] -> [B, N, 3]."""
        cfg = self.config
        along = torch.sigmoid(raw_xyz.mean(-1, keepdim=True) + cfg.depth_preact_bias)
        t_near = -(origins * dirs).sum(-1, keepdim=True)  # distance to the ray's point nearest the origin
        xyz = origins + ((2.0 * along - 1.0) * cfg.depth_range + t_near) * dirs
        if cfg.clip_xyz is not None and self.training:
            xyz = xyz.clamp(-cfg.clip_xyz, cfg.clip_xyz)
        return xyz

    def activate(self, raw: Tensor, xyz: Tensor) -> Gaussians:
        """raw [B, N, P] + centres [B, N, 3] -> Gaussians (FaceLift's activations; SH degree 0 -> RGB)."""
        cfg = self.config
        sh = 3 * (cfg.sh_degree + 1) ** 2
        _, feats, scale, rot, opac = raw.split([3, sh, 3, 4, 1], dim=-1)
        return Gaussians.from_sh0(
            means=xyz,
            quats=F.normalize(rot, dim=-1),
            scales=torch.exp((scale + cfg.scale_bias).clamp(max=cfg.scale_max_log)),
            opacities=torch.sigmoid(opac[..., 0] + cfg.opacity_bias),
            sh0=feats[..., :3],  # the DC term: sh_degree is 0 (GSLRMConfig)
        )

    def forward(self, images: Tensor, c2w: Tensor, fxfycxcy: Tensor) -> Gaussians:
        """images [B, V, 3, H, W] in [0, 1]; c2w [B, V, 4, 4]; fxfycxcy [B, V, 4] -> Gaussians with
        N = G + V * H * W (global Gaussians first, then pixels in (view, patch row, patch col, py, px) order)."""
        p = self.config.patch_size
        h, w = images.shape[-2:]
        if h % p or w % p:
            raise ValueError(f"GS-LRM: image size {h}x{w} is not a multiple of the patch size {p}")
        pixels, origins, dirs = posed_pixels(images, c2w, fxfycxcy)
        glob, img = self.encode(pixels)
        raw_glob, raw_pix = self.decode(glob, img)
        patchify = self.patch_embedder[0]
        o_tok = patchify(origins).reshape(raw_pix.shape[0], -1, 3)
        d_tok = patchify(dirs).reshape(raw_pix.shape[0], -1, 3)
        xyz = torch.cat([raw_glob[..., :3], self.pixel_xyz(raw_pix[..., :3], o_tok, d_tok)], dim=1)
        return self.activate(torch.cat([raw_glob, raw_pix], dim=1), xyz)

    # ---- accounting -----------------------------------------------------------------------------------------------
    def matmul_flops(self, batch: int, views: int, height: int, width: int, backward: bool = True) -> float:
        """Transformer matmul FLOPs (linear layers + attention scores and values) of one step."""
        cfg = self.config
        n = cfg.num_global_tokens + views * (height // cfg.patch_size) * (width // cfg.patch_size)
        d = cfg.width
        per_layer = 2 * n * d * (3 * d + d + 2 * cfg.mlp_ratio * d) + 4 * n * n * d
        embed = 2 * views * height * width * cfg.in_channels * d
        head = 2 * n * d * cfg.patch_size ** 2 * cfg.gaussian_dim
        fwd = batch * (cfg.depth * per_layer + embed + head)
        return fwd * (3.0 if backward else 1.0)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def gslrm_state_dict_shapes(config: GSLRMConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the network's tensors, without allocating them (meta device)."""
    with torch.device("meta"):
        net = GSLRM(config)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}




def check_state_dict(expected: dict[str, tuple[int, ...]], state: dict[str, Tensor], where: str) -> None:
    """Raise ValueError naming ``where`` and every missing, unexpected or mis-shaped tensor."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k}: {tuple(state[k].shape)} (expected {expected[k]})"
        for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k])
    )
    if missing or unexpected or wrong:
        parts = [f"{where}: state dict does not match the GS-LRM layout"]
        if missing:
            parts.append(f"missing {len(missing)} keys: {missing}")
        if unexpected:
            parts.append(f"unknown {len(unexpected)} keys: {unexpected}")
        if wrong:
            parts.append(f"wrong shape for {len(wrong)} keys: {wrong}")
        raise ValueError("\n  ".join(parts))


def config_from_state_dict(state: dict[str, Tensor], head_dim: int = 64, **overrides: Any) -> GSLRMConfig:
    """Infer the network size from a FaceLift-layout state dict (head_dim is not visible in shapes)."""
    try:
        d, patch_in = state["patch_embedder.1.weight"].shape
        g = state["gaussian_position_embeddings"].shape[0]
        gdim = state["gaussian_upsampler.linear.weight"].shape[0]
        pix = state["pixel_gaussian_decoder.1.weight"].shape[0]
    except KeyError as e:
        raise ValueError(f"not a GS-LRM state dict: no {e.args[0]!r}") from None
    depth = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("transformer_layers.")), default=-1)
    sh_terms = (gdim - 11) // 3
    sh_degree = round(sh_terms**0.5) - 1
    patch = round((pix // gdim) ** 0.5)
    mlp = state.get("transformer_layers.0.mlp.mlp.0.weight")
    cfg = {"width": int(d), "depth": depth, "head_dim": head_dim, "patch_size": patch, "in_channels": int(patch_in) // patch**2,
               "num_global_tokens": int(g), "sh_degree": sh_degree,
               "mlp_ratio": int(mlp.shape[0]) // int(d) if mlp is not None else 4}
    cfg.update(overrides)
    return GSLRMConfig(**cfg)


__all__ = [
    "GSLRM",
    "SH_C0",
    "GSLRMConfig",
    "check_state_dict",
    "config_from_state_dict",
    "count_parameters",
    "gslrm_state_dict_shapes",
    "posed_pixels",
]
