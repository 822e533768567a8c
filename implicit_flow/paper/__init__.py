"""The paper, reproduced and extended: Vardi & Shamir (COLT 2021) as a toolkit.

Built-in constructions (Theorem 3 data, symmetries, the depth-2 start), zero-loss sets
and projections onto them, candidate regularizers and the falsification engine,
Theorem 8 at scale with an adversarial search, depth-2 studies, and `run_reproduce`
(the `implicit-flow reproduce` command).
"""

from ._batch import neuron_flows as neuron_flows, NeuronBatch as NeuronBatch
from ._datasets import (
    depth2_start as depth2_start,
    random_rotation as random_rotation,
    rotate as rotate,
    scale_labels as scale_labels,
    theorem3_data as theorem3_data,
    theorem3_minimizer as theorem3_minimizer,
    theorem3_phase1 as theorem3_phase1,
    theorem3_switch_time as theorem3_switch_time,
)
from ._depth2 import (
    BalancednessGD as BalancednessGD,
    effective_weight as effective_weight,
    eps_sweep as eps_sweep,
    EpsilonSweep as EpsilonSweep,
    extrapolate_to_zero as extrapolate_to_zero,
    Extrapolation as Extrapolation,
    flow_path as flow_path,
    gd_balancedness as gd_balancedness,
)
from ._falsify import (
    FalsificationReport as FalsificationReport,
    FalsificationRow as FalsificationRow,
    falsify as falsify,
    flow_sample as flow_sample,
    FlowSample as FlowSample,
)
from ._gd import gd_to_steady_state as gd_to_steady_state
from ._regularizers import (
    AbstractRegularizer as AbstractRegularizer,
    CallableRegularizer as CallableRegularizer,
    ConstantRegularizer as ConstantRegularizer,
    DistanceToPoint as DistanceToPoint,
    DistanceToStart as DistanceToStart,
    L1Norm as L1Norm,
    L2Norm as L2Norm,
)
from ._reproduce import run_reproduce as run_reproduce
from ._theorem8 import (
    adversarial_ratio_search as adversarial_ratio_search,
    AdversarialResult as AdversarialResult,
    distance_monotonicity as distance_monotonicity,
    random_realizable_problems as random_realizable_problems,
    RealizableProblems as RealizableProblems,
    theorem8_study as theorem8_study,
    Theorem8Study as Theorem8Study,
    time_span as time_span,
)
from ._zero_loss import (
    zero_loss_set as zero_loss_set,
    zero_loss_set_of as zero_loss_set_of,
    ZeroLossSet as ZeroLossSet,
)
