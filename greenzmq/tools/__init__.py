"""The ``greenzmq`` subcommands: demo, bench and trace."""
