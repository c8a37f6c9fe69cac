"""The exception types users see: one per kind of mistake."""


class ConfigError(ValueError):
    """A configuration value is wrong. `path` is the dotted key (`sparse_attention_config.page_size`)."""

    def __init__(self, message: str, path: str = "") -> None:
        self.path = path
        self.detail = message
        super().__init__(f"{path}: {message}" if path else message)


class RequestError(ValueError):
    """A request (prompt or sampling parameters) is invalid; the engine stays usable."""
