from ._activation import leaky_relu as leaky_relu
from ._base import AbstractModel as AbstractModel
from ._linear import DeepLinear as DeepLinear, LinearPredictor as LinearPredictor
from ._relu import ReLUNeuron as ReLUNeuron, TwoLayerReLU as TwoLayerReLU
