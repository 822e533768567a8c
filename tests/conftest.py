import jax


# float64 is set once, at start-up, for the whole test session.
jax.config.update("jax_enable_x64", True)
