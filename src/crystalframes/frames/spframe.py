"""SPFrame (Hua & Lin): invariant local frames composed with an equivariant global frame."""

from __future__ import annotations

import torch

from crystalframes.precision import full_precision

# Quaternions with norm below this have no direction; they map to the identity rotation.
QUATERNION_EPS = 1e-8


def quaternion_to_rotation(q: torch.Tensor, eps: float = QUATERNION_EPS) -> torch.Tensor:
    """Rotation matrix of quaternion q = (a, b, c, d) (Hua & Lin, SPFrame, Algorithm 1/3), batched (..., 4).

    q is normalised first; the division is guarded so that a (near-)zero quaternion
    (|q| <= eps) gives the identity rotation, with finite gradients, never NaN. Differentiable.

        [[a2+b2-c2-d2, 2(bc-ad),    2(bd+ac)   ],
         [2(bc+ad),    a2-b2+c2-d2, 2(cd-ab)   ],
         [2(bd-ac),    2(cd+ab),    a2-b2-c2+d2]]
    """
    norm = q.norm(dim=-1, keepdim=True)
    unit = q / norm.clamp_min(eps)
    identity = torch.zeros_like(q)
    identity[..., 0] = 1.0
    a, b, c, d = torch.where(norm > eps, unit, identity).unbind(-1)
    rows = [
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
    ]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def compose_spframe(local_frames: torch.Tensor, global_frames: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """F_i = F_INV,i F_global (Hua & Lin, SPFrame, Eq. 4): ``local_frames`` (N, 3, 3) per atom,
    ``global_frames`` (B, 3, 3) per structure, ``batch`` (N,) structure of each atom."""
    return local_frames @ global_frames[batch]


@full_precision  # the rotated edges feed the equivariant layers: exact, not bf16 (crystalframes.precision)
def edges_in_frames(edge_vec: torch.Tensor, frames: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Edge vectors expressed in the frame of their centre atom: e_ij F_i^T
    (= e_ij F_global^T F_INV,i^T, Hua & Lin, SPFrame, Eq. 5). ``edge_vec`` (E, 3), ``frames`` (N, 3, 3),
    ``centre`` (E,) = edge_index[0]."""
    return torch.einsum("ek,ejk->ej", edge_vec, frames[centre])
