"""Event data through tonic's transforms (Denoise, ToFrame) into tt.nn.run: docs/tutorials/events.md as a script.

    python examples/tonic_events.py   # needs the tonic extra: pip install -e '.[tonic]'
"""

import numpy as np
import tonic.transforms as T
import torch
from torch import nn

import tracetorch as tt

SENSOR = (8, 8, 2)   # width, height, polarities
EVENT = np.dtype([("x", int), ("y", int), ("t", int), ("p", int)])   # tonic's event dtype


def moving_dot(direction, rng, n=200, duration=50_000):
    """Events of a dot crossing the sensor left to right (direction 1) or right to left (0), plus noise."""
    t = np.sort(rng.integers(0, duration, n))
    x = (t * 8 // duration) if direction else 7 - (t * 8 // duration)
    events = np.zeros(n, dtype=EVENT)
    events["x"], events["y"], events["t"], events["p"] = x, rng.integers(3, 5, n), t, 1
    noise = np.zeros(20, dtype=EVENT)
    noise["x"], noise["y"], noise["t"] = rng.integers(0, 8, 20), rng.integers(0, 8, 20), rng.integers(0, duration, 20)
    both = np.concatenate([events, noise])
    return both[np.argsort(both["t"], kind="stable")]


transform = T.Compose([T.Denoise(filter_time=10_000), T.ToFrame(sensor_size=SENSOR, n_time_bins=10)])
rng = np.random.default_rng(0)
labels = torch.tensor([i % 2 for i in range(32)])
frames = [torch.from_numpy(transform(moving_dot(int(k), rng))).float() for k in labels]   # each [T, 2, 8, 8]
xs = torch.stack(frames, dim=1).clamp(max=1.0)          # time-first [T, B, 2, 8, 8]
assert xs.shape == (10, 32, 2, 8, 8)

torch.manual_seed(0)
with tt.nn.defaults(quant_fn="round"):
    net = nn.Sequential(nn.Flatten(), nn.Linear(128, 32), tt.nn.LIB(32), nn.Linear(32, 2), tt.nn.LI(2))
opt = torch.optim.Adam(net.parameters(), lr=1e-2)
for _epoch in range(30):
    tt.state.zero_states(net)
    logits = tt.nn.run(net, xs).mean(0)                 # [B, 2]: the readout membrane over time
    loss = nn.functional.cross_entropy(logits, labels)
    opt.zero_grad()
    loss.backward()
    opt.step()
tt.state.zero_states(net)
with torch.no_grad():
    accuracy = (tt.nn.run(net, xs).mean(0).argmax(-1) == labels).float().mean()
print(f"train accuracy {accuracy:.2f}")
assert accuracy > 0.9
