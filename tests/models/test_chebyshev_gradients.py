"""Gradients of CrystalFramer's angle encoding with respect to the frame (issue 13): the Chebyshev
moments are differentiable in the cosines, exactly (also at c = +-1), so a learned frame upstream of
the angle encoding is trained; fixed frames do not pay for that derivative."""

from __future__ import annotations

import pytest
import torch

from crystalframes.nn.chebyshev import ChebyshevMoments
from crystalframes.models.periodic_attention import PeriodicAttention, PeriodicGeometry


pytestmark = pytest.mark.usefixtures("one_thread")


def moments_inputs(seed=0, terms=9):
    """Rows sorted by length, w zero beyond each row's length, cosines in [-1, 1] with some at and
    next to the endpoints (where T_n' = +-n^2 is largest and n sin(n t) / sin(t) is 0/0)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([3, 4, 6, 7, 7])
    mask = (torch.arange(7) < lengths.unsqueeze(-1)).unsqueeze(1)
    w = torch.rand(5, 2, 7, dtype=torch.float64, generator=g) * mask
    c = torch.rand(5, 7, 3, dtype=torch.float64, generator=g) * 2 - 1
    c[0, 0] = torch.tensor([1.0, -1.0, 1.0 - 1e-9], dtype=torch.float64)
    c[3, 1] = torch.tensor([-1.0 + 1e-12, 1.0, -1.0], dtype=torch.float64)
    c[4, 6, 0] = 1.0
    return w, c, lengths, mask, terms


def chebyshev_reference(c, terms):
    """T_0(c) .. T_(terms-1)(c), (..., terms), by the recurrence in plain (differentiable) torch."""
    t = [torch.ones_like(c), c]
    while len(t) < terms:
        t.append(2 * c * t[-1] - t[-2])
    return torch.stack(t[:terms], dim=-1)


@pytest.mark.parametrize("budget", [40, 10_000])  # several row chunks / one chunk
def test_chebyshev_moments_gradcheck_all_inputs(budget):
    w, c, lengths, mask, terms = moments_inputs()
    w.requires_grad_()
    c.requires_grad_()
    assert torch.autograd.gradcheck(lambda w, c: ChebyshevMoments.apply(w * mask, c, lengths, terms, budget), (w, c))


def test_chebyshev_moments_cosine_gradient_matches_the_polynomial_derivative():
    """Against autograd through the plain recurrence (the same polynomial), also at c = +-1, and
    T_n'(+-1) = (+-1)^(n+1) n^2 exactly."""
    w, c, lengths, mask, terms = moments_inputs(seed=1, terms=40)
    w.requires_grad_()
    c.requires_grad_()
    g = torch.randn(5, 2, 3, terms, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    gw, gc = torch.autograd.grad(ChebyshevMoments.apply(w, c, lengths, terms, 40), (w, c), g)
    ref = torch.einsum("rhm,rmkn->rhkn", w, chebyshev_reference(c, terms))
    rw, rc = torch.autograd.grad(ref, (w, c), g)
    # w is zero beyond the lengths by contract (its gradient there is left undefined)
    assert torch.allclose(gw * mask, rw * mask, rtol=1e-12, atol=1e-11)
    assert torch.allclose(gc, rc, rtol=1e-12, atol=1e-9)

    # one entry of weight 1 at c = +-1, gradient one-hot on degree n: T_n'(+-1)
    for end in (1.0, -1.0):
        c1 = torch.full((1, 1, 1), end, dtype=torch.float64, requires_grad=True)
        out = ChebyshevMoments.apply(torch.ones(1, 1, 1, dtype=torch.float64), c1, torch.tensor([1]), terms, 100)
        for n in range(terms):
            (d,) = torch.autograd.grad(out[0, 0, 0, n], c1, retain_graph=True)
            assert d.item() == end ** (n + 1) * n**2, (end, n)


def test_cosine_gradient_costs_nothing_when_the_cosines_are_fixed(monkeypatch):
    """Fixed frames: the second-kind recurrence never runs and the weight gradient is bitwise the
    one computed alongside the cosine gradient."""
    w, c, lengths, mask, terms = moments_inputs()
    g = torch.randn(5, 2, 3, terms, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    calls = []
    original = ChebyshevMoments._recurrence

    def spy(c, second_kind=False):
        calls.append(second_kind)
        return original(c, second_kind)

    monkeypatch.setattr(ChebyshevMoments, "_recurrence", staticmethod(spy))
    wf = w.clone().requires_grad_()
    (gw_fixed,) = torch.autograd.grad(ChebyshevMoments.apply(wf, c, lengths, terms, 40), (wf,), g)
    assert calls and not any(calls[len(calls) // 2 :])  # forward + backward, first kind only
    wl, cl = w.clone().requires_grad_(), c.clone().requires_grad_()
    gw_learned, _ = torch.autograd.grad(ChebyshevMoments.apply(wl, cl, lengths, terms, 40), (wl, cl), g)
    assert any(calls)
    assert torch.equal(gw_fixed, gw_learned)


def rotation(theta: torch.Tensor) -> torch.Tensor:
    """exp of the skew matrix of theta (3,): a rotation differentiable in theta."""
    zero = theta.new_zeros(())
    skew = torch.stack([
        torch.stack([zero, -theta[2], theta[1]]),
        torch.stack([theta[2], zero, -theta[0]]),
        torch.stack([-theta[1], theta[0], zero]),
    ])
    return torch.matrix_exp(skew)


def test_attention_passes_gradients_to_a_learned_frame():
    """Finite differences through Crystalformer's attention with per-atom frames that depend on a
    parameter (a frame of the protocol, not registered): the angle encoding's gradient reaches the
    frame's parameter."""
    from crystalframes.frames import Frame, FrameSetup

    torch.manual_seed(0)
    att = PeriodicAttention(dim=8, heads=2, angle_encoding=True, angle_bases=16, memory_budget=4096).double().eval()
    lattice = torch.tensor([[[3.1, 0.2, 0.0], [0.4, 2.9, 0.1], [0.0, 0.3, 3.4]]], dtype=torch.float64)
    frac = torch.tensor([[0.0, 0.0, 0.0], [0.45, 0.52, 0.61], [0.2, 0.7, 0.35]], dtype=torch.float64)
    x = torch.randn(3, 8, dtype=torch.float64)
    base = torch.linalg.qr(torch.randn(3, 3, 3, dtype=torch.float64)).Q  # one frame per atom

    class Rotated(Frame):
        """Every atom's frame base_i R(theta), theta a parameter."""

        def forward(self, layer, setup, hood):
            return (base @ rotation(self.theta)).index_select(0, hood.centres)

    frame = Rotated()
    batch = torch.zeros(3, dtype=torch.long)

    def output(theta):
        frame.theta = theta
        geometry = PeriodicGeometry(
            pos=frac @ lattice[0], frac=frac, lattice=lattice, batch=batch,
            num_atoms=torch.tensor([3]), frame_setup=FrameSetup(lattice, batch),
        )
        return att(x, geometry, frame, 0)

    theta = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(output(theta).square().sum(), theta)
    assert grad.abs().max() > 1e-6  # the frame really matters to the output
    assert torch.autograd.gradcheck(output, (theta,))


@pytest.mark.parametrize("budget", [1, 10**9])  # one row per chunk / every row in one chunk
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_blocked_moments_match_the_plain_recurrence(precision, budget):
    """The blocked, sign-folded recurrence of ChebyshevMoments against T_n from the plain
    recurrence: the angle Gaussians sum_n C[n, m] T_n(c) of the model's expansion within
    ANGLE_BASIS_TOLERANCE of the exact polynomial (the plain recurrence in float64 at the same c),
    per degree within it in float64, and exactly at c = +-1 and c = 0."""
    from crystalframes.nn.chebyshev import ANGLE_BASIS_TOLERANCE, angle_centres, chebyshev_expansion

    dtype, tol = getattr(torch, precision), ANGLE_BASIS_TOLERANCE[precision]
    coef = chebyshev_expansion(*angle_centres(64), tolerance=tol)  # (terms, D): 46 / 63 terms
    terms = coef.shape[0]
    g = torch.Generator().manual_seed(4)
    u = torch.rand(6000, dtype=torch.float64, generator=g)
    # uniform on [-1, 1], crowded near the ends (where the recurrence's rounding grows most), and the exact points
    c = torch.cat([u[:3000] * 2 - 1, 1 - u[3000:4500] ** 4 / 20, -1 + u[4500:] ** 4 / 20,
                   torch.tensor([1.0, -1.0, 0.0] * 2, dtype=torch.float64)]).to(dtype).view(-1, 1, 3)
    rows = c.shape[0]
    # one column per row with weight 1: S[r, 0, a, n] = T_n(c[r, 0, a])
    t = ChebyshevMoments.apply(torch.ones(rows, 1, 1, dtype=dtype), c, [1] * rows, terms, budget)[:, 0]
    exact = chebyshev_reference(c[:, 0].double(), terms)
    basis_error = ((t.double() - exact) @ coef).abs().max()
    assert basis_error <= tol, basis_error
    if precision == "float64":
        assert (t - exact).abs().max() <= tol
    ends = c[:, 0].abs().eq(1) | c[:, 0].eq(0)
    assert torch.equal(t[ends], chebyshev_reference(c[:, 0], terms)[ends])

    # several columns, rows of different lengths: the chunks' widths and the blocks' padding
    w, c, lengths, mask, _ = moments_inputs(seed=5)
    s = ChebyshevMoments.apply(w.to(dtype), c.to(dtype), lengths, terms, budget)
    ref = torch.einsum("rhm,rmkn->rhkn", w, chebyshev_reference(c.to(dtype).double(), terms))
    assert (s.double() - ref).abs().max() <= (1e-12 if precision == "float64" else 1e-4)
