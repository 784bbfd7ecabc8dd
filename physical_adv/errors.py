"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(ValueError):
    """A bad input or option. The CLI prints it as one line ``physical-adv: error: …``
    and exits with code 2; library callers get an ordinary ``ValueError``."""
