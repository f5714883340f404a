"""The error every model-side check raises: what cannot be loaded, and how to make it available."""

from hpcnli.errors import UserFacingError


class ModelError(UserFacingError, ValueError):
    """A model that cannot be loaded, with how to make it available."""
