"""The tutorial's roles as greenzmq services (``greenzmq services.NAME:app``)."""
