"""The scripts ``greenzmq bench`` runs, shipped inside the package.

``broker_anchors.py`` and ``mux_anchors.py`` are copies of the project's shared
reference benchmarks (the anchors every figure is compared with), kept as
they were copied; ``mux.py`` runs greenzmq's consumers beside them.
``reliable.py`` runs greenzmq's Majordomo broker and PPP queue beside
majortomo's broker and the anchors of ``reliable_anchors.py`` (greenzmq's own,
written after the zguide's mdbroker, ppqueue and their peers). Each is run as
a script (``python PATH``) in its own process, never imported.
"""
