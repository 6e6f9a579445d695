"""The scripts ``greenzmq bench`` runs, shipped inside the package.

``broker_anchors.py`` and ``mux_anchors.py`` are copies of the project's shared
reference benchmarks (the anchors every figure is compared with), kept as
they were copied; ``mux.py`` runs greenzmq's consumers beside them. Each is
run as a script (``python PATH``) in its own process, never imported.
"""
