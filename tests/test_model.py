"""Cells against torch's own, and the fused sequence path against stepping the cells."""

import pytest
import torch

from streamrnn.config import ModelConfig
from streamrnn.detector.model import Forecaster, GRUCell, LSTMCell, gaussian_nll


@pytest.mark.parametrize("batch", [1, 5])
def test_lstm_cell_matches_torch(batch: int) -> None:
    torch.manual_seed(0)
    ref = torch.nn.LSTMCell(6, 8)
    cell = LSTMCell(6, 8)
    cell.load_state_dict(ref.state_dict())
    x, h, c = torch.randn(batch, 6), torch.randn(batch, 8), torch.randn(batch, 8)
    for _ in range(20):  # several steps, so errors would compound
        h_ref, c_ref = ref(x, (h, c))
        h_new, c_new = cell(x, (h, c))
        torch.testing.assert_close(h_new, h_ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(c_new, c_ref, atol=1e-5, rtol=0)
        h, c = h_ref, c_ref


@pytest.mark.parametrize("batch", [1, 5])
def test_gru_cell_matches_torch(batch: int) -> None:
    torch.manual_seed(1)
    ref = torch.nn.GRUCell(6, 8)
    cell = GRUCell(6, 8)
    cell.load_state_dict(ref.state_dict())
    x, h = torch.randn(batch, 6), torch.randn(batch, 8)
    for _ in range(20):
        h_ref = ref(x, h)
        torch.testing.assert_close(cell(x, h), h_ref, atol=1e-5, rtol=0)
        h = h_ref


def test_cells_keep_torch_parameter_names_and_shapes() -> None:
    assert {k: v.shape for k, v in LSTMCell(3, 4).state_dict().items()} == {
        k: v.shape for k, v in torch.nn.LSTMCell(3, 4).state_dict().items()
    }
    assert {k: v.shape for k, v in GRUCell(3, 4).state_dict().items()} == {
        k: v.shape for k, v in torch.nn.GRUCell(3, 4).state_dict().items()
    }


def test_cell_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"input must have shape \(batch, 3\), got \(2, 4\)"):
        LSTMCell(3, 4)(torch.zeros(2, 4), (torch.zeros(2, 4), torch.zeros(2, 4)))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_fused_sequence_equals_stepping_the_cells(cell: str) -> None:
    torch.manual_seed(2)
    model = Forecaster(
        ModelConfig(cell=cell, hidden_size=16, num_layers=3, dropout=0.3), n_values=2, n_extra=4
    ).eval()
    x = torch.randn(4, 30, 6)
    state0 = torch.randn(4, 3, model.slots, 16) * 0.1
    mean, scale, final = model.sequence(x, state0)
    state = state0
    for t in range(30):
        m, s, state = model.step(x[:, t], state)
        torch.testing.assert_close(m, mean[:, t], atol=1e-5, rtol=0)
        torch.testing.assert_close(s, scale[:, t], atol=1e-5, rtol=0)
    torch.testing.assert_close(state, final, atol=1e-5, rtol=0)
    assert bool((scale > 0).all())


def test_fused_layers_match_torch_lstm_module() -> None:
    torch.manual_seed(3)
    ref = torch.nn.LSTM(5, 8, num_layers=2, batch_first=True)
    model = Forecaster(
        ModelConfig(cell="lstm", hidden_size=8, num_layers=2, dropout=0.0), n_values=1, n_extra=4
    ).eval()
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(layer, name).copy_(getattr(ref, f"{name}_l{i}"))
    x = torch.randn(3, 12, 5)
    out, (h, c) = ref(x)
    _, _, final = model.sequence(x)
    torch.testing.assert_close(final[:, :, 0], h.permute(1, 0, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(final[:, :, 1], c.permute(1, 0, 2), atol=1e-5, rtol=0)


def test_gaussian_nll_masks() -> None:
    mean = torch.zeros(2, 3)
    scale = torch.ones(2, 3)
    target = torch.tensor([[0.0, 0.0, 100.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert gaussian_nll(mean, scale, target, mask).item() == pytest.approx(0.9189385, abs=1e-6)


@pytest.mark.parametrize("shape", [(7,), (300, 64), (1000, 256)], ids=["small", "mid", "wave"])
def test_tanh_paths_agree_with_torch(shape: tuple[int, ...]) -> None:
    from streamrnn.detector.model import tanh

    torch.manual_seed(2)
    x = torch.randn(*shape) * 4
    x.view(-1)[:3] = torch.tensor([0.0, float("inf"), -float("inf")])
    want = torch.tanh(x)
    with torch.no_grad():  # the NumPy kernel, also over a strided slice
        torch.testing.assert_close(tanh(x), want, atol=0, rtol=3e-7)
        if x.dim() == 2:
            torch.testing.assert_close(tanh(x[:, 1::2]), want[:, 1::2], atol=0, rtol=3e-7)
    xg = x.clone().requires_grad_(True)  # a gradient: torch's own
    y = tanh(xg)
    torch.testing.assert_close(y.detach(), want, atol=0, rtol=3e-7)
    y.sum().backward()
    torch.testing.assert_close(xg.grad, 1 - want**2, atol=1e-6, rtol=1e-5)
