"""The ``process`` backend, all of it in one package.

- :mod:`._backend`: the backend itself, the program's one loky pool lent to every call,
  and what each worker runs as it starts.
- :mod:`._forkserver`: workers forked from a server that has imported their modules once;
  the list of modules it preloads.
- :mod:`._preload`: the fork server's own program (it runs in another interpreter).
- :mod:`._shared_memory`: large numpy arrays travelling through ``/dev/shm`` instead of
  the pipe, both ways.
- :mod:`._loky`: the one place that touches loky, and every private attribute of it.

Nothing outside this package reaches into loky; the rest of conc-ml sees the backend
through :class:`~conc_ml.backends.Backend`. This file imports nothing, so that the fork
server's program and the loky module can be imported without the backend itself.
"""
