"""User-facing errors: the CLI turns these into one line on stderr and exit code 2."""


class ImageLoRAError(ValueError):
    """Bad input from the user (a config, a model, a file): reported in one line, exit 2."""


class UnsupportedModelError(ImageLoRAError):
    """The model's family is not one the registry knows."""


class SelectionError(ImageLoRAError):
    """A head selection that does not fit the model or the budget."""


class AdapterFormatError(ImageLoRAError):
    """An adapter directory that is missing, corrupt, or made for another model."""


class TrainingFailed(RuntimeError):
    """Training did not complete (after Ray Train's restarts): exit status 1 at the CLI."""
