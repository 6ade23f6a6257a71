"""The VixDiskLib C ABI as cffi sees it: our declarations and the table of symbols.

Role: the one place that knows the library's types, struct layouts and functions, which of
them are required and since which VDDK version each exists. Nothing here loads anything.

Layouts are VDDK 7.0's, the newest shape of each struct: the connect parameters grew the
vStorage-object spec in 6.7; ``VixDiskLibInfo`` and ``VixDiskLibCreateParams`` grew
``logicalSectorSize`` and ``physicalSectorSize`` (uint32 each, at the end) in 7.0, so the
library of 7, 8 and 9 reads 32 bytes of create parameters and hands back a 64-byte info. We
always allocate the 7.0 shape (a 6.x library reads the first 24 bytes of it and ignores the
rest) and read the two sector sizes only from a library of major version 7 or later (a 6.x
library's info ends before them: ``info_has_sector_sizes``).

Limits: LP64 Linux. ``va_list`` in the log callbacks is declared as ``void *``: on x86_64 (an
array type, so a pointer when passed) and aarch64 (a 32-byte struct, passed by reference) that
is how it travels; ``logbridge`` hands it back to libc's ``vsnprintf`` unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import cffi

SECTOR_SIZE = 512
FLAG_OPEN_UNBUFFERED = 1
FLAG_OPEN_SINGLE_LINK = 2
FLAG_OPEN_READ_ONLY = 4
MIN_CHUNK_SECTORS = 128            # VIXDISKLIB_MIN_CHUNK_SIZE
MAX_CHUNK_NUMBER = 512 * 1024      # VIXDISKLIB_MAX_CHUNK_NUMBER
# The largest chunk we ask QueryAllocatedBlocks for (VIXDISKLIB_MAX_CHUNK_SIZE bounds it in the
# library; we stay at or under 64 MiB, a bound every released library accepts). Larger wishes
# are answered by querying at this size and rounding the answer out.
MAX_CHUNK_SECTORS = 128 * 1024
CRED_UID = 1
CRED_SESSIONID = 2
SPEC_VMX = 0
SPEC_VSTORAGE_OBJECT = 1
DISK_MONOLITHIC_FLAT = 2
# Virtual hardware versions the header names for created disks (VIXDISKLIB_HWVERSION_*); the
# newest one it defines is ESX65 = 13, and a value above it is not a version the header knows.
HWVERSIONS = {"workstation4": 3, "workstation5": 4, "workstation6": 6, "esx30": 4, "esx4x": 7,
              "esx50": 8, "esx51": 9, "esx55": 10, "esx60": 11, "esx65": 13}
HWVERSION_NEWEST = max(HWVERSIONS.values())
# Sector sizes a 7.0+ library accepts in the create parameters and reports in the info:
# 512-byte logical sectors (512n and 512e disks) or 4096 (4Kn).
LOGICAL_SECTOR_SIZES = (512, 4096)
PHYSICAL_SECTOR_SIZES = (512, 4096)
# The first library major version whose structs have the sector sizes.
SECTOR_SIZES_SINCE = 7
ADAPTERS = {"ide": 1, "buslogic": 2, "lsilogic": 3}
ADAPTER_NAMES = {v: k for k, v in ADAPTERS.items()}
MINIMUM_VDDK = "6.7"

CDEF = """
typedef uint64_t VixError;
typedef uint8_t Bool;
typedef void *VixDiskLibConnection;
typedef void *VixDiskLibHandle;
typedef void (*VixDiskLibGenericLogFunc)(const char *fmt, void *args);
typedef Bool (*VixDiskLibProgressFunc)(void *data, int percent);

typedef struct {
    char *vmxSpec;
    char *serverName;
    char *thumbPrint;
    long privateUse;
    int credType;
    union {
        struct { char *userName; char *password; } uid;
        struct { char *cookie; char *userName; char *key; } sessionId;
        void *ticketId;
    } creds;
    uint32_t port;
    uint32_t nfcHostPort;
    char *reserved3;
    char reserved4[8];
    void *reserved5;
    union {
        struct { char *id; char *datastoreMoRef; char *ssId; } vStorageObjSpec;
    } spec;
    int specType;
} VixDiskLibConnectParams;

typedef struct { uint32_t cylinders; uint32_t heads; uint32_t sectors; } VixDiskLibGeometry;

typedef struct {
    VixDiskLibGeometry biosGeo;
    VixDiskLibGeometry physGeo;
    uint64_t capacity;
    int adapterType;
    int numLinks;
    char *parentFileNameHint;
    char *uuid;
    uint32_t logicalSectorSize;   /* 7.0+ */
    uint32_t physicalSectorSize;  /* 7.0+ */
} VixDiskLibInfo;

typedef struct { uint64_t offset; uint64_t length; } VixDiskLibBlock;
typedef struct { uint32_t numBlocks; VixDiskLibBlock blocks[1]; } VixDiskLibBlockList;

typedef struct {
    int diskType;
    int adapterType;
    uint16_t hwVersion;
    uint64_t capacity;
    uint32_t logicalSectorSize;   /* 7.0+ */
    uint32_t physicalSectorSize;  /* 7.0+ */
} VixDiskLibCreateParams;

VixError VixDiskLib_InitEx(uint32_t major, uint32_t minor, VixDiskLibGenericLogFunc log,
                           VixDiskLibGenericLogFunc warn, VixDiskLibGenericLogFunc panic,
                           const char *libDir, const char *configFile);
void VixDiskLib_Exit(void);
const char *VixDiskLib_ListTransportModes(void);
char *VixDiskLib_GetErrorText(VixError err, const char *locale);
void VixDiskLib_FreeErrorText(char *text);
VixDiskLibConnectParams *VixDiskLib_AllocateConnectParams(void);
void VixDiskLib_FreeConnectParams(VixDiskLibConnectParams *params);
VixError VixDiskLib_Cleanup(const VixDiskLibConnectParams *params, uint32_t *numCleanedUp,
                            uint32_t *numRemaining);
VixError VixDiskLib_PrepareForAccess(const VixDiskLibConnectParams *params, const char *identity);
VixError VixDiskLib_EndAccess(const VixDiskLibConnectParams *params, const char *identity);
VixError VixDiskLib_ConnectEx(const VixDiskLibConnectParams *params, Bool readOnly,
                              const char *snapshotRef, const char *transportModes,
                              VixDiskLibConnection *connection);
VixError VixDiskLib_Disconnect(VixDiskLibConnection connection);
VixError VixDiskLib_Create(VixDiskLibConnection connection, const char *path,
                           const VixDiskLibCreateParams *createParams,
                           VixDiskLibProgressFunc progressFunc, void *progressCallbackData);
VixError VixDiskLib_Open(VixDiskLibConnection connection, const char *path, uint32_t flags,
                         VixDiskLibHandle *handle);
VixError VixDiskLib_Close(VixDiskLibHandle handle);
const char *VixDiskLib_GetTransportMode(VixDiskLibHandle handle);
VixError VixDiskLib_GetInfo(VixDiskLibHandle handle, VixDiskLibInfo **info);
void VixDiskLib_FreeInfo(VixDiskLibInfo *info);
VixError VixDiskLib_Read(VixDiskLibHandle handle, uint64_t startSector, uint64_t numSectors,
                         uint8_t *readBuffer);
VixError VixDiskLib_Write(VixDiskLibHandle handle, uint64_t startSector, uint64_t numSectors,
                          const uint8_t *writeBuffer);
VixError VixDiskLib_Flush(VixDiskLibHandle handle);
VixError VixDiskLib_QueryAllocatedBlocks(VixDiskLibHandle handle, uint64_t startSector,
                                         uint64_t numSectors, uint64_t chunkSize,
                                         VixDiskLibBlockList **blockList);
VixError VixDiskLib_FreeBlockList(VixDiskLibBlockList *blockList);
VixError VixDiskLib_GetMetadataKeys(VixDiskLibHandle handle, char *keys, size_t maxLen,
                                    size_t *requiredLen);
VixError VixDiskLib_ReadMetadata(VixDiskLibHandle handle, const char *key, char *buf,
                                 size_t bufLen, size_t *requiredLen);
VixError VixDiskLib_WriteMetadata(VixDiskLibHandle handle, const char *key, const char *val);
"""


@dataclass(frozen=True)
class Symbol:
    """One library function: required ones must exist, optional ones degrade a feature."""

    name: str
    required: bool
    since: str  # the first VDDK version that has it


SYMBOLS: tuple[Symbol, ...] = (
    Symbol("VixDiskLib_InitEx", True, "5.5"),
    Symbol("VixDiskLib_Exit", True, "5.5"),
    Symbol("VixDiskLib_ListTransportModes", True, "5.5"),
    Symbol("VixDiskLib_GetErrorText", True, "5.5"),
    Symbol("VixDiskLib_FreeErrorText", True, "5.5"),
    Symbol("VixDiskLib_FreeConnectParams", True, "5.5"),
    Symbol("VixDiskLib_Cleanup", True, "5.5"),
    Symbol("VixDiskLib_PrepareForAccess", True, "5.5"),
    Symbol("VixDiskLib_EndAccess", True, "5.5"),
    Symbol("VixDiskLib_ConnectEx", True, "5.5"),
    Symbol("VixDiskLib_Disconnect", True, "5.5"),
    Symbol("VixDiskLib_Create", True, "5.5"),
    Symbol("VixDiskLib_Open", True, "5.5"),
    Symbol("VixDiskLib_Close", True, "5.5"),
    Symbol("VixDiskLib_GetTransportMode", True, "5.5"),
    Symbol("VixDiskLib_GetInfo", True, "5.5"),
    Symbol("VixDiskLib_FreeInfo", True, "5.5"),
    Symbol("VixDiskLib_Read", True, "5.5"),
    Symbol("VixDiskLib_Write", True, "5.5"),
    Symbol("VixDiskLib_GetMetadataKeys", True, "5.5"),
    Symbol("VixDiskLib_ReadMetadata", True, "5.5"),
    Symbol("VixDiskLib_WriteMetadata", True, "5.5"),
    Symbol("VixDiskLib_Flush", False, "6.0"),
    Symbol("VixDiskLib_QueryAllocatedBlocks", False, "6.7"),
    Symbol("VixDiskLib_FreeBlockList", False, "6.7"),
    Symbol("VixDiskLib_AllocateConnectParams", False, "6.7"),
)


def info_has_sector_sizes(major: int | None) -> bool:
    """Whether a library of this major version fills ``logicalSectorSize``/``physicalSectorSize``
    in ``VixDiskLibInfo`` (unknown versions: no, the 6.7 shape is the safe reading)."""
    return major is not None and major >= SECTOR_SIZES_SINCE


def make_ffi() -> cffi.FFI:
    """A cffi instance that knows our declarations (ABI mode: nothing is compiled)."""
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    return ffi
