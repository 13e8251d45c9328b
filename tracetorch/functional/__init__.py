"""The pure core: one ``step(params, state, x) -> (y, state)`` per neuron type.

No ``nn.Module`` lives here. Params are NamedTuples of *activated* tensors, states NamedTuples of
tensors shaped like the input (neuron dimension last). The contract is Haiku's init/apply::

    params = init_params("LIB", 128)          # init
    state = init_state("LIB", x0)
    y, state = lib_step(params, state, x)     # apply, once per timestep
    ys, state = scan(lib_step, params, state, xs)  # or over a [T, ...] sequence
"""

from __future__ import annotations

from . import constraints, kernels, spikes
from .constraints import (
    decay_to_halflife,
    decay_to_timesteps,
    halflife_to_decay,
    sigmoid_inverse,
    softplus_inverse,
    timesteps_to_decay,
)
from .delays import (
    DelayedLinearParams,
    DelayParams,
    DelayState,
    delay_kernel,
    delay_scan,
    delay_step,
    delayed_linear_scan,
    delayed_linear_step,
    init_delay_state,
)
from .neurons import NAMES, SPECS, NeuronSpec, ParamSpec, get_spec, init_params, init_state, make_step
from .spikes import (
    QUANTIZERS,
    SPIKE_FUNCTIONS,
    Atan,
    Erf,
    FastSigmoid,
    Sigmoid,
    Triangle,
    bernoulli_from_noise,
    bernoulli_st,
    probabilistic_from_noise,
    probabilistic_st,
    round_st,
    sigmoid4x,
)
from .time import scan

#: ``{"lib_step": step, ...}``: the 52 named pure steps.
STEPS = {f"{name.lower()}_step": make_step(SPECS[name]) for name in NAMES}
globals().update(STEPS)

__all__ = [
    "constraints",
    "spikes",
    "kernels",
    "NAMES",
    "SPECS",
    "STEPS",
    "NeuronSpec",
    "ParamSpec",
    "get_spec",
    "get_step",
    "init_params",
    "init_state",
    "scan",
    "sigmoid_inverse",
    "softplus_inverse",
    "halflife_to_decay",
    "decay_to_halflife",
    "timesteps_to_decay",
    "decay_to_timesteps",
    "sigmoid4x",
    "Sigmoid",
    "FastSigmoid",
    "Atan",
    "Triangle",
    "Erf",
    "SPIKE_FUNCTIONS",
    "QUANTIZERS",
    "round_st",
    "bernoulli_st",
    "probabilistic_st",
    "bernoulli_from_noise",
    "probabilistic_from_noise",
    "DelayParams",
    "DelayState",
    "DelayedLinearParams",
    "init_delay_state",
    "delay_step",
    "delay_scan",
    "delay_kernel",
    "delayed_linear_step",
    "delayed_linear_scan",
    *STEPS,
]


def get_step(name_or_spec):
    """The pure step of a type given by name or spec, e.g. ``get_step("LIB") is lib_step``."""
    return STEPS[f"{get_spec(name_or_spec).name.lower()}_step"]
