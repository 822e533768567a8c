from ._exact import exact_flow as exact_flow, linear_limit as linear_limit
