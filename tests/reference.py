"""Float64 references for the EDiT modules, written from the equations with torch.nn.functional only
(no edit_core code), so a test compares two independent implementations."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _d(t):
    return None if t is None else t.detach().double()


def to_grid(x, h, w):
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


def heads_of(x, heads):
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).permute(0, 2, 1, 3)


def rms(x, weight, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def conv_fusion(x, p, h, w, groups, slope=0.01):
    """x + Conv1×1(LeakyReLU(GN(Conv3×3(x)))) on the row-major grid."""
    y = F.conv2d(to_grid(x, h, w), _d(p["conv_in.weight"]), _d(p["conv_in.bias"]), padding=1)
    y = F.group_norm(y, groups, _d(p["norm.weight"]), _d(p["norm.bias"]), eps=1e-5)
    y = F.conv2d(F.leaky_relu(y, slope), _d(p["conv_out.weight"]), _d(p["conv_out.bias"]))
    return x + y.flatten(2).transpose(1, 2)


def compress(x, weight, bias, h, w):
    y = F.conv2d(to_grid(x, h, w), _d(weight), _d(bias), stride=2, padding=1, groups=x.shape[-1])
    return y.flatten(2).transpose(1, 2)


def linear_attention(q, k, v, eps=1e-6):
    a = q @ k.transpose(-1, -2)
    return (a @ v) / (a.sum(-1, keepdim=True) + eps)


def edit_branch(x, p, t, h, w, heads, groups, norm_q=None, norm_k=None):
    """ReLU linear branch: (Q^EDiT, K^EDiT, V^EDiT) in heads layout, float64. ``p`` = adapter layer state,
    ``t`` = teacher weights with canonical names."""
    x = x.double()
    xq = conv_fusion(x, {k[len("conv_fusion."):]: v for k, v in p.items() if k.startswith("conv_fusion.")}, h, w,
                     groups)
    q = heads_of(F.linear(xq, _d(t["to_q.weight"]), _d(t.get("to_q.bias"))), heads)
    k = compress(F.linear(x, _d(t["to_k.weight"]), _d(t.get("to_k.bias"))), p["key_compressor.conv.weight"],
                 p["key_compressor.conv.bias"], h, w)
    v = compress(F.linear(x, _d(t["to_v.weight"]), _d(t.get("to_v.bias"))), p["value_compressor.conv.weight"],
                 p["value_compressor.conv.bias"], h, w)
    k, v = heads_of(k, heads), heads_of(v, heads)
    if norm_q is not None:
        q, k = rms(q, _d(norm_q)), rms(k, _d(norm_k))
    return F.relu(q), F.relu(k), v


def edit_self_attention(x, p, t, h, w, heads, groups, norm_q=None, norm_k=None):
    q, k, v = edit_branch(x, p, t, h, w, heads, groups, norm_q, norm_k)
    y = linear_attention(q, k, v).permute(0, 2, 1, 3).flatten(2)
    return F.linear(y, _d(t["to_out.weight"]), _d(t.get("to_out.bias")))


def mm_edit_joint(image, text, p, t, h, w, heads, groups, eta="approx", image_rows_only=False):
    """MM-EDiT from the equations. Returns (image out, text out or None), float64."""
    image, text = image.double(), text.double()
    lin_q, lin_k, lin_v = edit_branch(image, p, t, h, w, heads, groups, t.get("norm_q.weight"), t.get("norm_k.weight"))
    def proj(x, name, norm=None):
        y = heads_of(F.linear(x, _d(t[f"{name}.weight"]), _d(t.get(f"{name}.bias"))), heads)
        return rms(y, _d(t[norm])) if norm and norm in t else y
    qi, ki, vi = proj(image, "to_q", "norm_q.weight"), proj(image, "to_k", "norm_k.weight"), proj(image, "to_v")
    qt, kt, vt = (proj(text, "add_q_proj", "norm_added_q.weight"), proj(text, "add_k_proj", "norm_added_k.weight"),
                  proj(text, "add_v_proj"))
    scale = 1 / math.sqrt(qi.shape[-1])
    a_lin = lin_q @ lin_k.transpose(-1, -2)
    z_lin = a_lin.sum(-1, keepdim=True)
    y_lin = (a_lin @ lin_v) / (z_lin + 1e-6)
    logits = qi @ kt.transpose(-1, -2) * scale
    y_sm = torch.softmax(logits, -1) @ vt
    n_i, n_t = image.shape[1], text.shape[1]
    eta_w = n_i / (n_i + n_t) if eta == "approx" else z_lin / (z_lin + logits.exp().sum(-1, keepdim=True))
    y_img = eta_w * y_lin + (1 - eta_w) * y_sm
    out_img = F.linear(y_img.permute(0, 2, 1, 3).flatten(2), _d(t["to_out.weight"]), _d(t["to_out.bias"]))
    if image_rows_only:
        return out_img, None
    kj, vj = torch.cat([kt, ki], 2), torch.cat([vt, vi], 2)
    y_txt = torch.softmax(qt @ kj.transpose(-1, -2) * scale, -1) @ vj
    out_txt = F.linear(y_txt.permute(0, 2, 1, 3).flatten(2), _d(t["to_add_out.weight"]), _d(t["to_add_out.bias"]))
    return out_img, out_txt
