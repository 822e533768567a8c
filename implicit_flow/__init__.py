"""implicit_flow: gradient flows to their limit points, many at a time, on JAX."""

import importlib.metadata

from . import paper as paper
from ._classify import (
    Classification as Classification,
    classify as classify,
    classify_ensemble as classify_ensemble,
    count_kinds as count_kinds,
    kind_names as kind_names,
    LimitKind as LimitKind,
)
from ._data import Dataset as Dataset
from ._ensemble import (
    AbstractEnsembleEngine as AbstractEnsembleEngine,
    LanePool as LanePool,
    PlainVmap as PlainVmap,
    solve_ensemble as solve_ensemble,
)
from ._gd import (
    compare_gd_flow as compare_gd_flow,
    GDFlowComparison as GDFlowComparison,
    GDResult as GDResult,
    run_gd as run_gd,
)
from ._kinks import KinkSolver as KinkSolver, LandOnKinks as LandOnKinks
from ._loss import (
    AbstractLoss as AbstractLoss,
    MeanSquareLoss as MeanSquareLoss,
    SumSquareLoss as SumSquareLoss,
)
from ._modified import ModifiedGradientFlow as ModifiedGradientFlow
from ._nonsmooth import FilippovFlow as FilippovFlow, Pieces as Pieces
from ._objective import (
    AbstractFlow as AbstractFlow,
    FlatLayout as FlatLayout,
    GradientFlow as GradientFlow,
    Objective as Objective,
)
from ._result import (
    FlowResult as FlowResult,
    Status as Status,
    status_names as status_names,
)
from ._samplers import (
    AbstractSampler as AbstractSampler,
    Gaussian as Gaussian,
    PlaneGrid as PlaneGrid,
    sample_inits as sample_inits,
    Sphere as Sphere,
)
from ._sharpness import (
    hessian_vector_product as hessian_vector_product,
    sharpness as sharpness,
    sharpness_dense as sharpness_dense,
    sharpness_lanczos as sharpness_lanczos,
    top_eigenpair as top_eigenpair,
)
from ._solve import solve_flow as solve_flow
from ._tail import TailJump as TailJump
from ._work_precision import (
    markdown_table as markdown_table,
    work_precision as work_precision,
    WorkPrecisionPoint as WorkPrecisionPoint,
    write_work_precision as write_work_precision,
)
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
