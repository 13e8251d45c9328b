"""Uses of the public API that a static type checker must refuse (tests/test_typing.py expects each error)."""

import torch

import tracetorch as tt

tt.nn.LIB("eight")  # E: num_neurons is an int
tt.nn.LIB(8, learn_beta="yes")  # E: learn_beta is a bool
tt.nn.LIB(8, gamma=0.5)  # E: LIB has no gamma
tt.functional.lib_step(None, None, torch.zeros(2), quant="round")  # E: the keyword is quant_fn
y: int = tt.functional.lif_step  # E: there is no lif_step
