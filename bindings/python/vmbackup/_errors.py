"""The vmbackup.Error hierarchy.

Every failed call raises a subclass of :class:`Error` chosen by the library's status code. Subclasses
also derive from the closest builtin exception, so ``except FileNotFoundError`` or ``except
ValueError`` work as expected::

    try:
        target.get_backup("nightly")
    except vmbackup.NotFoundError as e:   # also a FileNotFoundError
        print(e.code, e.code_name, e.message)
"""

# Codes that may succeed when retried unchanged after a delay (mirrors vmbackup::Status::retryable()).
_RETRYABLE = frozenset({4, 8, 10, 14})

_NAMES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}


class Error(Exception):
    """Base class of every error raised by vmbackup.

    Attributes:
      code: the numeric status code (the same number as vmbackup::StatusCode and the C ABI's
        negated VMB_E* codes).
      code_name: the upper-case name of the code, e.g. "NOT_FOUND".
      message: the library's message (names the offending field, volume or object; never secrets).
      retryable: True when the call may succeed if retried unchanged after a delay.
    """

    code = 2  # UNKNOWN, for instances created without a code

    def __init__(self, message="", code=None):
        # One positional argument only: OSError-derived subclasses would read two as (errno, text).
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = int(code)

    @property
    def code_name(self):
        return _NAMES.get(self.code, "UNKNOWN_CODE")

    @property
    def retryable(self):
        return self.code in _RETRYABLE

    def __str__(self):
        return self.message

    def __reduce__(self):
        return (type(self), (self.message, self.code))


class CancelledError(Error):
    """The job was cancelled: by cancel(), a progress callback, or Ctrl-C."""
    code = 1


class UnknownError(Error):
    code = 2


class InvalidArgumentError(Error, ValueError):
    """Bad argument or configuration; the message names the field."""
    code = 3


class DeadlineExceededError(Error, TimeoutError):
    code = 4


class NotFoundError(Error, FileNotFoundError):
    """No such backup, volume, file, bucket or export."""
    code = 5


class AlreadyExistsError(Error, FileExistsError):
    """A backup of that name, or a restore destination, already exists."""
    code = 6


class PermissionDeniedError(Error, PermissionError):
    code = 7


class ResourceExhaustedError(Error):
    """The target or destination is full, or memory ran out. Retryable."""
    code = 8


class FailedPreconditionError(Error):
    """The system is not in a state for the call; fix it before retrying."""
    code = 9


class AbortedError(Error):
    """A concurrency conflict; retry the whole sequence."""
    code = 10


class OutOfRangeError(Error, IndexError):
    code = 11


class UnimplementedError(Error, NotImplementedError):
    code = 12


class InternalError(Error):
    """A bug in vmbackup."""
    code = 13


class UnavailableError(Error, ConnectionError):
    """The target could not be reached or asked to try later. Retryable."""
    code = 14


class DataLossError(Error):
    """Stored data is corrupt (digest or checksum mismatch). Do not retry."""
    code = 15


class UnauthenticatedError(Error, PermissionError):
    """The target rejected the credentials."""
    code = 16


# The class for each code, used by the extension module to raise errors.
_BY_CODE = {
    cls.code: cls
    for cls in (CancelledError, UnknownError, InvalidArgumentError, DeadlineExceededError,
                NotFoundError, AlreadyExistsError, PermissionDeniedError, ResourceExhaustedError,
                FailedPreconditionError, AbortedError, OutOfRangeError, UnimplementedError,
                InternalError, UnavailableError, DataLossError, UnauthenticatedError)
}

for _cls in [Error] + list(_BY_CODE.values()):
    _cls.__module__ = "vmbackup"
del _cls
