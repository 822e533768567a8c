"""The paper, reproduced and extended: Vardi & Shamir (COLT 2021) as a toolkit.

Built-in constructions (Theorem 3 data, symmetries, the depth-2 start), zero-loss sets
and projections onto them, candidate regularizers and the falsification engine,
Theorem 8 at scale with an adversarial search, depth-2 studies, and `run_reproduce`
(the `implicit-flow reproduce` command).
"""

from ._batch import NeuronBatch as NeuronBatch
from ._batch import neuron_flows as neuron_flows
from ._datasets import (
    depth2_start as depth2_start,
)
from ._datasets import (
    random_rotation as random_rotation,
)
from ._datasets import (
    rotate as rotate,
)
from ._datasets import (
    scale_labels as scale_labels,
)
from ._datasets import (
    theorem3_data as theorem3_data,
)
from ._datasets import (
    theorem3_minimizer as theorem3_minimizer,
)
from ._datasets import (
    theorem3_phase1 as theorem3_phase1,
)
from ._datasets import (
    theorem3_switch_time as theorem3_switch_time,
)
from ._depth2 import (
    BalancednessGD as BalancednessGD,
)
from ._depth2 import (
    EpsilonSweep as EpsilonSweep,
)
from ._depth2 import (
    Extrapolation as Extrapolation,
)
from ._depth2 import (
    effective_weight as effective_weight,
)
from ._depth2 import (
    eps_sweep as eps_sweep,
)
from ._depth2 import (
    extrapolate_to_zero as extrapolate_to_zero,
)
from ._depth2 import (
    flow_path as flow_path,
)
from ._depth2 import (
    gd_balancedness as gd_balancedness,
)
from ._falsify import (
    FalsificationReport as FalsificationReport,
)
from ._falsify import (
    FalsificationRow as FalsificationRow,
)
from ._falsify import (
    FlowSample as FlowSample,
)
from ._falsify import (
    falsify as falsify,
)
from ._falsify import (
    flow_sample as flow_sample,
)
from ._gd import gd_to_steady_state as gd_to_steady_state
from ._regularizers import (
    AbstractRegularizer as AbstractRegularizer,
)
from ._regularizers import (
    CallableRegularizer as CallableRegularizer,
)
from ._regularizers import (
    ConstantRegularizer as ConstantRegularizer,
)
from ._regularizers import (
    DistanceToPoint as DistanceToPoint,
)
from ._regularizers import (
    DistanceToStart as DistanceToStart,
)
from ._regularizers import (
    L1Norm as L1Norm,
)
from ._regularizers import (
    L2Norm as L2Norm,
)
from ._reproduce import run_reproduce as run_reproduce
from ._theorem8 import (
    AdversarialResult as AdversarialResult,
)
from ._theorem8 import (
    RealizableProblems as RealizableProblems,
)
from ._theorem8 import (
    Theorem8Study as Theorem8Study,
)
from ._theorem8 import (
    adversarial_ratio_search as adversarial_ratio_search,
)
from ._theorem8 import (
    distance_monotonicity as distance_monotonicity,
)
from ._theorem8 import (
    random_realizable_problems as random_realizable_problems,
)
from ._theorem8 import (
    theorem8_study as theorem8_study,
)
from ._theorem8 import (
    time_span as time_span,
)
from ._zero_loss import (
    ZeroLossSet as ZeroLossSet,
)
from ._zero_loss import (
    zero_loss_set as zero_loss_set,
)
from ._zero_loss import (
    zero_loss_set_of as zero_loss_set_of,
)
