"""A test-only trained fit kind (a small translator trained with Adam on the vectors it is handed), shared by the
fit plug-in and export tests through the ``translator`` fixture in conftest.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rba.fit import Fit, FitInput, SpanFit


class Translator(nn.Module):
    """Linear D→D/2, GELU, Linear D/2→D on every vector (the trained translators' shape)."""

    def __init__(self, dim_in: int, dim_out: int, layout: str):
        super().__init__()
        self.fc1 = nn.Linear(dim_in, dim_in // 2)
        self.fc2 = nn.Linear(dim_in // 2, dim_out)
        self.layout = layout

    def forward(self, h):
        if self.layout == "pixels":
            return self.fc2(F.gelu(self.fc1(h.movedim(1, -1)))).movedim(-1, 1)
        return self.fc2(F.gelu(self.fc1(h)))


class VectorTranslatorFit(Fit):
    """Trains a :class:`Translator` with Adam on the (x_i, x_j) pairs it is handed; remembers what it got."""

    needs = "vectors"
    trained = True
    steps = 60

    def __init__(self):
        self.seen: dict = {}

    def fit(self, data: FitInput) -> SpanFit:
        x, y = (t.double() for t in data.vectors)
        self.seen[data.span] = (x.clone(), y.clone())
        torch.manual_seed(data.seed)
        m = self.module(data.dim_in, data.dim_out, layout="tokens", span=data.span).double()
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        with torch.inference_mode(False), torch.enable_grad():
            first = float(((m(x) - y) ** 2).sum().detach())
            for _ in range(self.steps):
                opt.zero_grad()
                loss = ((m(x) - y) ** 2).mean()
                loss.backward()
                opt.step()
        tensors = {k: v.detach().clone() for k, v in m.state_dict().items()}
        with torch.no_grad():
            sse = float(((m(x) - y) ** 2).sum())
        return SpanFit(data.span, self.name, data.dim_in, data.dim_out, tensors, sse, info={"initial_sse": first})

    def module(self, dim_in, dim_out, *, layout, span):
        return Translator(dim_in, dim_out, layout)
