"""The tutorial's roles as greenzmq services.

``greenzmq services.NAME:app`` from the repository root; installed (and in a
checkout, from anywhere greenzmq imports) they are ``greenzmq.services.NAME``.
"""
