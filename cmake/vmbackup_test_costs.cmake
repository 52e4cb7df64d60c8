# ctest-time helper (a TEST_INCLUDE_FILES entry of tests/ and tests/integration/, read after the
# gtest_discover_tests lists): gives each test a COST, so that `ctest -jN` starts the long tests
# first and keeps the radosgw chain busy from the start (docs/testing.md, "CI time").
#
# ctest runs tests in descending COST. Every test that holds the vmbackup_s3_server lock runs alone
# among them, one after the other; together they are the longest path of the run, so they cost 1000
# more than any other test: one of the two slots runs them back to back from the first second, the
# other runs everything else, longest first. Without this, ctest started them last and ran them on
# one slot while the other stood idle.
#
# A build tree that has run ctest once orders by its own measured times instead
# (Testing/Temporary/CTestCostData.txt); CI's tree is always fresh. A test missing from the table
# costs 0 (plus the lock bonus). The seconds are one measured run on the shared 2-core machine
# (`ctest --preset default -j2 --output-junit …`, tests of 1 s or more; parameterized names without
# their value, the longest of their values): refresh them when a test's time changes much.

# Suites whose tests hold vmbackup_s3_server (tests/integration/CMakeLists.txt, tests/CMakeLists.txt).
set(_vmb_s3_locked_suites vmbackup_s3_integration_tests vmbackup_hostile_tests
    vmbackup_store_conformance_tests vmbackup_target_matrix_tests
    vmbackup_verify_integration_tests vmbackup_gc_integration_tests vmbackup_kill_trials)

set(_vmb_seconds
  Targets/KillTrial.KilledAnywhereNothingIsLostAndGcFreesWhatWasLeft/s3 55
  Targets/KillTrial.FourWritersWithGcAndDeletesInALoopLoseNothing/s3 22
  Targets/KillTrial.KilledAnywhereNothingIsLostAndGcFreesWhatWasLeft/local 12
  Targets/KillTrial.FourWritersWithGcAndDeletesInALoopLoseNothing/local 4
  S3Test.ServerRestartedDuringBackupCompletesOrFailsCleanly 49
  S3Test.ObjectsWrittenByVmbackupAreListedAndReadByAwsCli 27
  S3FirstContactTest.PingFailsFastButAnOperationKeepsItsFullBudget 24
  S3Test.ClientKilledDuringBackupPublishesNothingAndNextBackupReuses 24
  Addressing/S3RoundTripTest.FullIncrementalDirtyMapRestoreListShowDelete/PathStyleTlsWithCert 20
  NfsTest.ServerRestartedDuringBackupCompletesOrFailsCleanly 20
  Targets/HostileTargetTest.SizesAndCountsAtTheirLimitsAreRefused/s3 19
  NfsTest.ServerDownLongerThanTimeoutFailsBoundedWithoutRecordThenRecovers 16
  S3Test.MultipartPutAboveThresholdReadsBackAndLeavesNoUploadOpen 15
  S3Test.ServerDownLongerThanRetryBudgetFailsCleanlyWithoutRecord 15
  Addressing/S3RoundTripTest.FullIncrementalDirtyMapRestoreListShowDelete/VirtualHostedTlsWithCert 13
  Addressing/S3RoundTripTest.FullIncrementalDirtyMapRestoreListShowDelete/PathStyleHttp 11
  S3FirstContactTest.OpeningAServerThatIsDownFailsWithinTheConnectDeadline 10
  S3Test.WholeObjectGetOfObjectAboveTheBoundIsDataLossNamingIt 9
  ConcurrencyTest.BackupRacingAnotherProcessOnTheSameTargetBothSucceed 8
  S3Test.ListAllPaginatesAndDeleteBatchesOverThousandsOfObjects 8
  FingerprintBackupTest.ReferenceIsOnlyTheSameNamedVmWithThisHostsKey 7
  Targets/BackupRestoreTest.IncrementalStoresOnlyChangedBlocks/nfs 7
  Targets/BackupRestoreTest.IncrementalStoresOnlyChangedBlocks/s3 7
  ConcurrencyTest.TwoBackupsOfDifferentVolumesAtOnceAreBothReadyAndRestorable 6
  FingerprintBackupTest.MatchesNeedTheHostsKeysAndAreSkippedWhenTurnedOff 6
  S3Test.RepositoryWrittenByOneProcessIsRestoredByAnother 6
  NfsTest.V3FullIncrementalDirtyMapRoundTripsByteIdentical 5
  S3Test.MissingBucketIsNotFoundNamingTheBucket 5
  Targets/HostileTargetTest.BackupAndVmNamesAreCheckedLikeWritersCheckThem/s3 5
  Targets/RuntimeThreadsTest.BackupAndRestoreRunOnTheRuntimesThreadsOnly/s3_named 5
  ConcurrencyTest.TwoJobsRacingForOneNamePublishExactlyOne 4
  CorruptionTest.FlippedByteInPackIndexKeepsListingAndFailsRestoreNamingTheIndex 4
  CrashTest.BackupKilledAfterFirstPackLeavesNoRecordAndNextBackupReusesItsPacks 4
  FingerprintBackupTest.IncrementalsRecordFingerprintsAndRestoreExactly 4
  NfsTest.ListPaginatesOverThousandKeysAndDeleteRemovesEmptiedDirs 4
  RestoreCrashTest.RestoreKilledMidwayLeavesNoDestinationAndCanBeRepeated 4
  RestoreCrashTest.RestoreKilledWhileOverwritingKeepsTheOldFileWhole 4
  S3Test.FlippedByteInPackObjectIsDataLossNamingBackupVolumeOffsetAndPack 4
  S3Test.UnreachableEndpointIsUnavailableWithinTheRetryBudget 4
  SigV4BotocoreTest.MatchesBotocoreForAwkwardS3Requests 4
  Targets/BackupRestoreTest.DirtyMapBackupReadsOnlyDirtyRanges/s3 4
  Targets/BackupRestoreTest.IncrementalStoresOnlyChangedBlocks/file 4
  Targets/HostileTargetTest.PackIndexEntriesOutsideTheirPackAreRefused/s3 4
  Targets/HostileTargetTest.VolumeNamesThatWouldEscapeTheDestinationAreRefused/s3 4
  Targets/RuntimeThreadsStrictTest.BackupAndRestoreStartNoThreadAtAll/nfs 4
  Targets/RuntimeThreadsStrictTest.BackupAndRestoreStartNoThreadAtAll/s3_named 4
  Targets/RuntimeThreadsTest.BackupAndRestoreRunOnTheRuntimesThreadsOnly/local 4
  Targets/RuntimeThreadsTest.BackupAndRestoreRunOnTheRuntimesThreadsOnly/nfs 4
  Targets/RuntimeThreadsTest.BackupAndRestoreRunOnTheRuntimesThreadsOnly/s3 4
  CorruptionTest.BlocksOfDamagedPackIndexAreStoredAgainByTheNextBackupWhichHealsRestore 3
  FingerprintBackupTest.ForgedCollisionFromTheTargetsKeyIsCaughtByTheIncremental 3
  NfsTest.ClosedPortIsUnavailableWithinTheTimeout 3
  S3Test.ConcurrentBackupsOfOneNamePublishExactlyOneRecord 3
  Targets/BackupRestoreTest.FullBackupRestoresIdenticalBytesAndKeepsHoles/s3 3
  Targets/HostileTargetTest.OversizedRecordIsRefusedUnread/file 3
  Targets/HostileTargetTest.OversizedRecordIsRefusedUnread/s3 3
  Targets/HostileTargetTest.RecordPointingAtAnotherBackupsObjectsIsRefused/s3 3
  Targets/HostileTargetTest.SizesAndCountsAtTheirLimitsAreRefused/file 3
  BadVolumeTest.VolumeTruncatedDuringBackupIsDataLossAndPublishesNothing 2
  CorruptionTest.FlippedByteInPackIsDataLossNamingBackupVolumeOffsetAndPack 2
  CorruptionTest.FlippedByteInVolumeIndexIsDataLossNamingIt 2
  CorruptionTest.MissingPackIsDataLossNamingIt 2
  FingerprintBackupTest.DamagedReferenceFingerprintsOnlyCostSpeed 2
  FingerprintBackupTest.UnusableStateDirectoryMeansNoFingerprints 2
  FullTargetTest.BackupToFullTargetIsResourceExhaustedAndEarlierBackupSurvives 2
  FullTargetTest.DirectIoPackWritesOnAFullExt4TargetAreResourceExhausted 2
  FullTargetTest.RestoreToFullDestinationIsResourceExhaustedAndLeavesNothing 2
  LocalStoreTest.LargeObjectsRoundTripExactly 2
  LocalStoreTest.WholeReadOfAHugePlantedObjectAllocatedItsSize 2
  NfsTest.DestroyingTheStoreEndsPendingOperations 2
  ReadOnlyTargetTest.BackupToReadOnlyTargetIsPermissionDeniedAndWritesNothing 2
  S3HostileServerTest.WholeObjectGetOfBodyBeyondTheBoundStopsTheTransfer 2
  SharedUploadBudgetTest.ConcurrentBackupsShareTheRuntimesBoundAndBuffers 2
  Targets/BackupRestoreTest.DestroyingARunningJobCancelsItAndPublishesNothing/s3 2
  Targets/BackupRestoreTest.DirtyMapBackupReadsOnlyDirtyRanges/file 2
  Targets/BackupRestoreTest.DirtyMapBackupReadsOnlyDirtyRanges/nfs 2
  Targets/BackupRestoreTest.FullBackupRestoresIdenticalBytesAndKeepsHoles/file 2
  Targets/BackupRestoreTest.FullBackupRestoresIdenticalBytesAndKeepsHoles/nfs 2
  Targets/BackupRestoreTest.RestoreRefusesToOverwriteUnlessAsked/s3 2
  Targets/HostileTargetTest.HostileDescriptorFieldsAreRefusedAtOpen/s3 2
  Targets/HostileTargetTest.HostileFingerprintsOnlyCostSpeed/s3 2
  BadVolumeTest.EmptyAndOddSizedVolumesRoundTripExactly 1
  CorruptionTest.FlippedByteInRecordIsListedAsDamagedWithoutHidingOthers 1
  CorruptionTest.MissingVolumeIndexIsDataLossNamingIt 1
  CorruptionTest.RecordStoredUnderAnotherNameIsReportedDamaged 1
  CorruptionTest.TruncatedPackIsDataLossNamingIt 1
  CorruptionTest.TruncatedRecordIsDataLossAndOthersStillList 1
  RestoreDestinationTest.MountedDeviceIsRefusedUntouched 1
  RestoreDestinationTest.SymlinkToABlockDeviceIsWrittenThroughNotReplaced 1
  TargetConfigTest.HttpS3EndpointInAConfigStructIsRefusedWhenOpened 1
  Targets/BackupRestoreTest.DestroyingARunningJobCancelsItAndPublishesNothing/nfs 1
  Targets/BackupRestoreTest.RestoreRefusesToOverwriteUnlessAsked/nfs 1
  Targets/HostileTargetTest.DeeplyNestedJsonIsRefusedWithoutRecursion/s3 1
  Targets/HostileTargetTest.VolumeIndexWhoseCountWrapsIsRefusedBeforeAllocating/s3 1
)
list(LENGTH _vmb_seconds _vmb_n)
math(EXPR _vmb_last "${_vmb_n} - 1")
foreach(_vmb_i RANGE 0 ${_vmb_last} 2)
  math(EXPR _vmb_j "${_vmb_i} + 1")
  list(GET _vmb_seconds ${_vmb_i} _vmb_name)
  list(GET _vmb_seconds ${_vmb_j} _vmb_s)
  set("_vmb_cost_${_vmb_name}" ${_vmb_s})
endforeach()

get_cmake_property(_vmb_vars VARIABLES)
list(FILTER _vmb_vars INCLUDE REGEX "^vmbackup_.*_TESTS$")
foreach(_vmb_list IN LISTS _vmb_vars)
  string(REGEX REPLACE "_TESTS$" "" _vmb_suite "${_vmb_list}")
  set(_vmb_bonus 0)
  list(FIND _vmb_s3_locked_suites "${_vmb_suite}" _vmb_at)  # ctest scripts have no IN_LIST
  if(_vmb_at GREATER -1)
    set(_vmb_bonus 1000)
  endif()
  foreach(_vmb_test IN LISTS ${_vmb_list})
    string(REGEX REPLACE "  #.*$" "" _vmb_key "${_vmb_test}")
    set(_vmb_cost 0)
    if(DEFINED "_vmb_cost_${_vmb_key}")
      set(_vmb_cost "${_vmb_cost_${_vmb_key}}")
    endif()
    math(EXPR _vmb_cost "${_vmb_cost} + ${_vmb_bonus}")
    set_tests_properties("${_vmb_test}" PROPERTIES COST ${_vmb_cost})
  endforeach()
endforeach()
