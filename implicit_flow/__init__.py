"""implicit_flow: gradient flows to their limit points, many at a time, on JAX."""

import importlib.metadata

from ._data import Dataset as Dataset
from ._ensemble import (
    AbstractEnsembleEngine as AbstractEnsembleEngine,
    LanePool as LanePool,
    PlainVmap as PlainVmap,
    solve_ensemble as solve_ensemble,
)
from ._loss import (
    AbstractLoss as AbstractLoss,
    MeanSquareLoss as MeanSquareLoss,
    SumSquareLoss as SumSquareLoss,
)
from ._objective import GradientFlow as GradientFlow, Objective as Objective
from ._result import FlowResult as FlowResult, Status as Status, status_names as status_names
from ._samplers import (
    AbstractSampler as AbstractSampler,
    Gaussian as Gaussian,
    PlaneGrid as PlaneGrid,
    sample_inits as sample_inits,
    Sphere as Sphere,
)
from ._solve import solve_flow as solve_flow
from .exact import exact_flow as exact_flow, linear_limit as linear_limit
from .models import (
    AbstractModel as AbstractModel,
    DeepLinear as DeepLinear,
    leaky_relu as leaky_relu,
    LinearPredictor as LinearPredictor,
    ReLUNeuron as ReLUNeuron,
    TwoLayerReLU as TwoLayerReLU,
)

__version__ = importlib.metadata.version("implicit_flow")
