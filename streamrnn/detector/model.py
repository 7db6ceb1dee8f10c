"""Recurrent cells and the shared forecaster.

References:
- Hochreiter & Schmidhuber (1997), "Long Short-Term Memory"; Gers, Schmidhuber & Cummins (2000),
  "Learning to Forget": the LSTM with forget gate, input gate, candidate vector, cell state and
  output gate.
- Cho et al. (2014), "Learning Phrase Representations using RNN Encoder-Decoder": the GRU with
  update and reset gates.
- torch.nn.LSTMCell / GRUCell for the parameter layout (gate order i, f, g, o and r, z, n), so
  weights trained with the fused kernels load into these cells and give the same numbers.

The streaming path steps the cells written here gate by gate; training runs whole windows through
torch's fused LSTM/GRU kernels (cuDNN on a GPU) over the very same parameter tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig


def tanh(x: Tensor) -> Tensor:
    """The hyperbolic tangent; on CPU by NumPy's kernel where no gradient is needed.

    Torch's CPU tanh kernel is slow on this project's benchmark machine (AVX-512): 530 us for
    256k floats, where NumPy's takes 40 us (and torch's sigmoid 55 us); NumPy's agrees with it
    within 1.2e-7 relative. With a gradient, and on other devices, ``torch.tanh``.
    """
    if (
        x.device.type == "cpu"
        and x.dtype in _NUMPY_FLOATS
        and not (x.requires_grad and torch.is_grad_enabled())
    ):
        return torch.from_numpy(np.tanh(x.detach().numpy()))
    return torch.tanh(x)


_NUMPY_FLOATS = (torch.float32, torch.float64)


def _check_2d(name: str, t: Tensor, batch: int | None, width: int) -> None:
    if t.dim() != 2 or t.shape[1] != width or (batch is not None and t.shape[0] != batch):
        want = f"({batch if batch is not None else 'batch'}, {width})"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")


class _GatedCell(nn.Module):
    """Parameters shared by both cells: ``gates`` stacked blocks of input and hidden weights."""

    def __init__(self, input_size: int, hidden_size: int, gates: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gates * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(gates * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(gates * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(gates * hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)  # torch's default initialisation
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)


class LSTMCell(_GatedCell):
    r"""A long short-term memory cell, gate by gate.

    .. math::
        f = \sigma(W_{if} x + b_{if} + W_{hf} h + b_{hf})        forget gate
        i = \sigma(W_{ii} x + b_{ii} + W_{hi} h + b_{hi})        input gate
        g = \tanh(W_{ig} x + b_{ig} + W_{hg} h + b_{hg})         candidate vector
        c' = f \odot c + i \odot g                               cell-state update
        o = \sigma(W_{io} x + b_{io} + W_{ho} h + b_{ho})        output gate
        h' = o \odot \tanh(c')

    Parameters are ``weight_ih`` (4H, I), ``weight_hh`` (4H, H), ``bias_ih`` (4H), ``bias_hh`` (4H),
    gates stacked in torch's order (i, f, g, o), so ``load_state_dict(torch.nn.LSTMCell(...).state_dict())``
    works.

    Inputs: input, (h_0, c_0)
        - input: (batch, input_size)
        - h_0, c_0: (batch, hidden_size)
    Outputs: h_1, c_1
        - h_1, c_1: (batch, hidden_size)
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size, gates=4)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        h, c = state
        _check_2d("input", x, None, self.input_size)
        _check_2d("h_0", h, x.shape[0], self.hidden_size)
        _check_2d("c_0", c, x.shape[0], self.hidden_size)
        # W_ih x + W_hh h + b_ih + b_hh, accumulated in one buffer.
        gates = torch.addmm(self.bias_ih + self.bias_hh, x, self.weight_ih.t())  # (B, 4H)
        gates.addmm_(h, self.weight_hh.t())
        # One sigmoid over all four gates (its value at g is unused): one contiguous kernel is
        # cheaper than three over strided slices.
        inp, forget, _, out = torch.sigmoid(gates).chunk(4, dim=1)  # each (B, H)
        candidate = tanh(gates[:, 2 * self.hidden_size : 3 * self.hidden_size])  # (B, H)
        c_new = forget * c + inp * candidate  # (B, H)
        h_new = out * tanh(c_new)  # (B, H)
        return h_new, c_new


class GRUCell(_GatedCell):
    r"""A gated recurrent unit cell, gate by gate.

    .. math::
        r = \sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr})        reset gate
        z = \sigma(W_{iz} x + b_{iz} + W_{hz} h + b_{hz})        update gate
        n = \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn}))   candidate
        h' = (1 - z) \odot n + z \odot h

    Parameters are ``weight_ih`` (3H, I), ``weight_hh`` (3H, H), ``bias_ih`` (3H), ``bias_hh`` (3H),
    gates stacked in torch's order (r, z, n).

    Inputs: input, h_0
        - input: (batch, input_size)
        - h_0: (batch, hidden_size)
    Outputs: h_1
        - h_1: (batch, hidden_size)
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size, gates=3)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        _check_2d("input", x, None, self.input_size)
        _check_2d("h_0", h, x.shape[0], self.hidden_size)
        gi = F.linear(x, self.weight_ih, self.bias_ih)  # (B, 3H)
        gh = F.linear(h, self.weight_hh, self.bias_hh)  # (B, 3H)
        hs = self.hidden_size
        # The reset and update gates in one sigmoid over both; each (B, H).
        reset, update = torch.sigmoid(gi[:, : 2 * hs] + gh[:, : 2 * hs]).chunk(2, dim=1)
        candidate = tanh(gi[:, 2 * hs :] + reset * gh[:, 2 * hs :])  # (B, H)
        return (1.0 - update) * candidate + update * h  # (B, H)


@dataclass(frozen=True)
class ForecasterShape:
    """What the state store needs to know to hold one key's recurrent state."""

    num_layers: int
    slots: int  # 2 for LSTM (h, c), 1 for GRU (h)
    hidden_size: int


class Forecaster(nn.Module):
    """Stacked LSTM/GRU cells with dropout between layers and a Gaussian head.

    The head maps the top layer's hidden state to the next step's mean and scale per target,
    so a prediction error becomes a likelihood that is comparable across keys of different noise.
    Covariates (``n_covariates``) and calendar features (``n_extra``) enter the first cell beside
    the targets; the head predicts the targets alone.

    Inputs of :meth:`step`: x, state
        - x: (batch, input_size), the normalised targets, the normalised covariates of the
          step to predict, then calendar features
        - state: (batch, num_layers, slots, hidden_size)
    Outputs: mean, scale, state_1
        - mean, scale: (batch, n_values)
        - state_1: (batch, num_layers, slots, hidden_size)
    """

    def __init__(
        self, config: ModelConfig, n_values: int, n_extra: int, n_covariates: int = 0
    ) -> None:
        super().__init__()
        self.config = config
        self.n_values = n_values
        self.n_covariates = n_covariates
        self.n_extra = n_extra
        self.input_size = n_values + n_covariates + n_extra
        self.cell_type = config.cell
        self.hidden_size = config.hidden_size
        self.num_layers = config.num_layers
        self.slots = 2 if config.cell == "lstm" else 1
        cell_cls = LSTMCell if config.cell == "lstm" else GRUCell
        self.layers = nn.ModuleList(
            cell_cls(self.input_size if i == 0 else config.hidden_size, config.hidden_size)
            for i in range(config.num_layers)
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, 2 * n_values)
        self.min_scale = config.min_scale

    @property
    def shape(self) -> ForecasterShape:
        return ForecasterShape(self.num_layers, self.slots, self.hidden_size)

    def _head(
        self, top: Tensor, mean_out: Tensor | None = None, scale_out: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        out = self.head(top)  # (..., 2F)
        mean, raw_scale = out.split(self.n_values, dim=-1)  # each (..., F)
        if mean_out is not None:
            mean = mean_out.copy_(mean)
        scale = F.softplus(raw_scale)  # (..., F)
        if scale_out is not None:
            return mean, torch.add(scale, self.min_scale, out=scale_out)
        scale = scale + self.min_scale
        return mean, scale

    def step(
        self,
        x: Tensor,
        state: Tensor,
        *,
        out: Tensor | None = None,
        mean_out: Tensor | None = None,
        scale_out: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One streaming step for a batch of keys (see the class docstring for shapes).

        ``out`` (batch, num_layers, slots, hidden_size), ``mean_out`` and ``scale_out``
        (batch, n_values), when given, receive the new state, mean and scale (views into a
        caller's buffer, say) and are returned.
        """
        b = x.shape[0]
        if state.shape != (b, self.num_layers, self.slots, self.hidden_size):
            raise ValueError(
                f"state must have shape {(b, self.num_layers, self.slots, self.hidden_size)}, "
                f"got {tuple(state.shape)}"
            )
        new = torch.empty_like(state) if out is None else out  # (B, L, S, H)
        inp = x  # (B, I)
        for i, cell in enumerate(self.layers):
            if self.slots == 2:
                h, c = cell(inp, (state[:, i, 0], state[:, i, 1]))  # each (B, H)
                new[:, i, 0] = h
                new[:, i, 1] = c
            else:
                h = cell(inp, state[:, i, 0])  # (B, H)
                new[:, i, 0] = h
            inp = self.dropout(h) if i + 1 < self.num_layers else h  # (B, H)
        mean, scale = self._head(inp, mean_out, scale_out)  # each (B, F)
        return mean, scale, new

    def _flat_weights(self) -> list[Tensor]:
        weights: list[Tensor] = []
        for cell in self.layers:
            assert isinstance(cell, _GatedCell)
            weights += [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
        return weights

    def sequence(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Run whole windows through the fused kernels over the cells' own parameters.

        Inputs: x (batch, time, input_size), state (batch, num_layers, slots, hidden_size) or None.
        Outputs: mean, scale (batch, time, n_values); final state (batch, num_layers, slots, hidden_size).
        """
        b = x.shape[0]
        if x.dim() != 3 or x.shape[2] != self.input_size:
            raise ValueError(
                f"x must have shape (batch, time, {self.input_size}), got {tuple(x.shape)}"
            )
        if state is None:
            state = x.new_zeros(b, self.num_layers, self.slots, self.hidden_size)
        hx = state.permute(2, 1, 0, 3).contiguous()  # (S, L, B, H)
        weights = self._flat_weights()
        drop = self.config.dropout if self.num_layers > 1 else 0.0
        if self.slots == 2:
            out, h_n, c_n = torch._VF.lstm(
                x, (hx[0], hx[1]), weights, True, self.num_layers, drop, self.training, False, True
            )  # out (B, T, H); h_n, c_n (L, B, H)
            final = torch.stack([h_n, c_n], dim=0)  # (S, L, B, H)
        else:
            out, h_n = torch._VF.gru(
                x, hx[0], weights, True, self.num_layers, drop, self.training, False, True
            )  # out (B, T, H); h_n (L, B, H)
            final = h_n.unsqueeze(0)  # (S, L, B, H)
        mean, scale = self._head(out)  # each (B, T, F)
        return mean, scale, final.permute(2, 1, 0, 3)


def gaussian_nll(mean: Tensor, scale: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean negative log-likelihood of ``target`` under N(mean, scale^2), ignoring masked-out entries."""
    nll = torch.log(scale) + 0.5 * ((target - mean) / scale) ** 2 + 0.5 * math.log(2 * math.pi)
    if mask is None:
        return nll.mean()
    m = mask.to(nll.dtype)
    return (nll * m).sum() / m.sum().clamp_min(1.0)
