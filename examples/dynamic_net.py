"""The seed's DynamicNet (a middle layer applied random.randint(0, 3) times per step),
trained 500 steps in eager mode and with @fusegrad.compile from the same initial weights.

Prints both loss curves every 100 steps (they agree), the compiled function's cache statistics
(one graph per depth, kernels shared between them) and the measured speedup.

    python examples/dynamic_net.py
"""

import copy
import random
import time

import fusegrad as torch


class DynamicNet(torch.nn.Module):
    def __init__(self, D_in, H, D_out):
        super(DynamicNet, self).__init__()
        self.input_linear = torch.nn.Linear(D_in, H)
        self.middle_linear = torch.nn.Linear(H, H)
        self.output_linear = torch.nn.Linear(H, D_out)

    def forward(self, x):
        h_relu = self.input_linear(x).clamp(min=0)
        for _ in range(random.randint(0, 3)):
            h_relu = self.middle_linear(h_relu).clamp(min=0)
        y_pred = self.output_linear(h_relu)
        return y_pred


# N is batch size; D_in is input dimension;
# H is hidden dimension; D_out is output dimension.
N, D_in, H, D_out = 64, 1000, 100, 10
STEPS = 500

torch.manual_seed(0)
x = torch.randn(N, D_in)
y = torch.randn(N, D_out)
model = DynamicNet(D_in, H, D_out)
initial = copy.deepcopy(model.state_dict())


def train(compiled: bool):
    """500 SGD-momentum steps from the same weights and the same depth sequence."""
    model.load_state_dict(initial)
    criterion = torch.nn.MSELoss(reduction="sum")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step(x, y):
        y_pred = model(x)
        loss = criterion(y_pred, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    run = torch.compile(step) if compiled else step
    random.seed(0)
    losses, times = [], []
    for t in range(STEPS):
        t0 = time.perf_counter()
        loss = run(x, y)
        times.append(time.perf_counter() - t0)
        if t % 100 == 99:
            losses.append(loss.item())
            print(f"  {t} {losses[-1]}")
    steady = sorted(times[50:])[len(times[50:]) // 2]
    return losses, steady, run


print("eager:")
eager_losses, eager_ms, _ = train(compiled=False)
print("compiled:")
comp_losses, comp_ms, step = train(compiled=True)

agree = all(abs(a - b) <= 1e-3 * max(1.0, abs(a)) for a, b in zip(eager_losses, comp_losses))
s = step.stats
print(f"losses agree: {agree}")
print(f"cache: {s.graphs_compiled} graphs compiled (the first step, which creates the momentum "
      f"buffers, then one per depth 0..3), {s.graph_hits} graph hits, "
      f"{s.kernels_compiled} kernels compiled, {s.kernel_hits} kernel hits, "
      f"{s.compile_seconds:.1f}s compiling")
print(f"steady state: eager {eager_ms * 1e3:.3f} ms/step, compiled {comp_ms * 1e3:.3f} ms/step, "
      f"speedup {eager_ms / comp_ms:.2f}x")
if not agree:
    raise SystemExit("compiled losses differ from eager")
