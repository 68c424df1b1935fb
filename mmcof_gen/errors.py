"""The project's shared exception: a leaf module (stdlib only), so every module can raise it without
importing config.py and the models it pulls in (that import made config.py <-> models/chat.py a cycle)."""


class ConfigError(ValueError):
    """A config file or flag that cannot be used; the message names the file or field and the fix."""
