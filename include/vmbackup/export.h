// Symbol visibility for the vmbackup shared library.
//
// The library is built with -fvisibility=hidden; only declarations marked VMBACKUP_EXPORT are part
// of the ABI. Static builds and consumers that define VMBACKUP_STATIC get an empty macro.
#ifndef VMBACKUP_EXPORT_H_
#define VMBACKUP_EXPORT_H_

#if defined(VMBACKUP_STATIC)
#define VMBACKUP_EXPORT
#elif defined(_WIN32)
#if defined(VMBACKUP_BUILDING)
#define VMBACKUP_EXPORT __declspec(dllexport)
#else
#define VMBACKUP_EXPORT __declspec(dllimport)
#endif
#else
#define VMBACKUP_EXPORT [[gnu::visibility("default")]]
#endif

#endif  // VMBACKUP_EXPORT_H_
