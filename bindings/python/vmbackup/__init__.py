"""vmbackup: back up VM volumes to a local directory, S3 bucket or NFS export, and restore them.

    import vmbackup

    target = vmbackup.BackupTarget.open({"type": "file", "endpoint": "/var/lib/vmbackup"})
    info = vmbackup.backup(target, "nightly", volumes={"rootdisk": "/vms/demo/root.img"},
                           vm_metadata={"name": "demo"})
    for b in target.list_backups():
        print(b.name, b.created_at, [v.name for v in b.volumes])
    vmbackup.restore(target, "nightly", volumes={"rootdisk": "/restore/root.img"})

Blocking calls release the GIL; Ctrl-C cancels a running backup or restore. Failures raise
vmbackup.Error subclasses that also derive from the closest builtin exception (NotFoundError is a
FileNotFoundError, InvalidArgumentError a ValueError, ...). See docs/python.md.
"""

from ._errors import (
    AbortedError,
    AlreadyExistsError,
    CancelledError,
    DataLossError,
    DeadlineExceededError,
    Error,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
)
from ._vmbackup import (
    BackupInfo,
    BackupJob,
    BackupTarget,
    JobState,
    Phase,
    Progress,
    RestorePlan,
    Runtime,
    VolumeBackupInfo,
    __version__,
    backup,
    restore,
    version_info,
)

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "BackupInfo",
    "BackupJob",
    "BackupTarget",
    "CancelledError",
    "DataLossError",
    "DeadlineExceededError",
    "Error",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "JobState",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "Phase",
    "Progress",
    "ResourceExhaustedError",
    "RestorePlan",
    "Runtime",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "VolumeBackupInfo",
    "backup",
    "restore",
    "version_info",
]
