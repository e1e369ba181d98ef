"""The shipped model catalog (``models.toml``); loaded through :class:`shoal.config.Config`."""
