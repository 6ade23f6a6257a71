/* The stand-in libvixDiskLib: types of the public VixDiskLib ABI (VDDK 7.0+ layouts, written
 * from the documented C interface) and the internal pieces shared by the stand-in's files.
 *
 * VixDiskLibInfo and VixDiskLibCreateParams end with two uint32 sector sizes since 7.0. As the
 * real library does, the stand-in reads and writes them only for a caller that announced 7.0 or
 * later to InitEx; for such a caller it checks them (a caller that allocated the 6.7 shape
 * hands it 8 bytes of whatever follows), and it allocates the info of the caller's shape.
 *
 * Limits: x86_64/aarch64 Linux (LP64); one flat extent per disk; no sparse or delta formats.
 */
#ifndef STANDIN_H
#define STANDIN_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- the public ABI ---------------------------------------------------------------------- */

typedef uint64_t VixError;
typedef char Bool;

#define VIX_OK 0
#define VIX_E_FAIL 1
#define VIX_E_OUT_OF_MEMORY 2
#define VIX_E_INVALID_ARG 3
#define VIX_E_FILE_NOT_FOUND 4
#define VIX_E_OBJECT_IS_BUSY 5
#define VIX_E_NOT_SUPPORTED 6
#define VIX_E_FILE_ERROR 7
#define VIX_E_DISK_FULL 8
#define VIX_E_FILE_READ_ONLY 11
#define VIX_E_FILE_ALREADY_EXISTS 12
#define VIX_E_BUFFER_TOOSMALL 24
#define VIX_E_HOST_USER_PERMISSIONS 3014
#define VIX_E_HOST_TCP_CONN_LOST 14011
#define VIX_E_DISK_INVAL 16000
#define VIX_E_DISK_NOINIT 16001
#define VIX_E_DISK_NOTSUPPORTED 16013
#define VIX_E_DISK_OUTOFRANGE 16007
#define VIX_E_DISK_KEY_NOTFOUND 16052
#define VIX_E_DISK_INVALID_CONNECTION 16054
#define VIX_E_INVALID_HANDLE 1000
#define VIX_E_CANNOT_CONNECT_TO_HOST 18000
#define VIX_E_NET_HTTP_SSL_SECURITY 30201

#define VIXDISKLIB_SECTOR_SIZE 512
#define VIXDISKLIB_FLAG_OPEN_UNBUFFERED 1
#define VIXDISKLIB_FLAG_OPEN_SINGLE_LINK 2
#define VIXDISKLIB_FLAG_OPEN_READ_ONLY 4
#define VIXDISKLIB_MIN_CHUNK_SIZE 128
#define VIXDISKLIB_MAX_CHUNK_NUMBER (512 * 1024)
#define STANDIN_MAX_CHUNK_SIZE (128 * 1024) /* sectors; the bound repofs stays under */
#define VIXDISKLIB_HWVERSION_NEWEST 13     /* ESX65, the newest the header defines */

typedef void VixDiskLibGenericLogFunc(const char *fmt, va_list args);
typedef Bool (*VixDiskLibProgressFunc)(void *data, int percent);

enum VixDiskLibCredType {
    VIXDISKLIB_CRED_UID = 1,
    VIXDISKLIB_CRED_SESSIONID = 2,
    VIXDISKLIB_CRED_TICKETID = 3,
    VIXDISKLIB_CRED_SSPI = 4,
    VIXDISKLIB_CRED_UNKNOWN = 256
};

enum VixDiskLibSpecType {
    VIXDISKLIB_SPEC_VMX = 0,
    VIXDISKLIB_SPEC_VSTORAGE_OBJECT = 1,
    VIXDISKLIB_SPEC_UNKNOWN = 2
};

typedef enum {
    VIXDISKLIB_DISK_MONOLITHIC_SPARSE = 1,
    VIXDISKLIB_DISK_MONOLITHIC_FLAT = 2,
    VIXDISKLIB_DISK_UNKNOWN = 256
} VixDiskLibDiskType;

typedef enum {
    VIXDISKLIB_ADAPTER_IDE = 1,
    VIXDISKLIB_ADAPTER_SCSI_BUSLOGIC = 2,
    VIXDISKLIB_ADAPTER_SCSI_LSILOGIC = 3,
    VIXDISKLIB_ADAPTER_UNKNOWN = 256
} VixDiskLibAdapterType;

/* VDDK 6.7+ connect parameters (the layout that AllocateConnectParams returns). */
typedef struct VixDiskLibConnectParams {
    char *vmxSpec;
    char *serverName;
    char *thumbPrint;
    long privateUse;
    enum VixDiskLibCredType credType;
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
    enum VixDiskLibSpecType specType;
} VixDiskLibConnectParams;

typedef struct { uint32_t cylinders, heads, sectors; } VixDiskLibGeometry;

typedef struct {
    VixDiskLibGeometry biosGeo;
    VixDiskLibGeometry physGeo;
    uint64_t capacity; /* sectors */
    VixDiskLibAdapterType adapterType;
    int numLinks;
    char *parentFileNameHint;
    char *uuid;
    uint32_t logicalSectorSize;  /* 7.0+ */
    uint32_t physicalSectorSize; /* 7.0+ */
} VixDiskLibInfo;
#define INFO_SIZE_6_7 offsetof(VixDiskLibInfo, logicalSectorSize)

typedef struct { uint64_t offset, length; } VixDiskLibBlock; /* sectors */
typedef struct { uint32_t numBlocks; VixDiskLibBlock blocks[1]; } VixDiskLibBlockList;

typedef struct {
    VixDiskLibDiskType diskType;
    VixDiskLibAdapterType adapterType;
    uint16_t hwVersion;
    uint64_t capacity; /* sectors */
    uint32_t logicalSectorSize;  /* 7.0+ */
    uint32_t physicalSectorSize; /* 7.0+ */
} VixDiskLibCreateParams;

typedef struct standin_conn *VixDiskLibConnection;
typedef struct standin_disk *VixDiskLibHandle;

/* ---- internals --------------------------------------------------------------------------- */

#define MAX_DATASTORES 64
#define MAX_META 64

struct standin_config {
    int n_datastores;
    char *ds_name[MAX_DATASTORES];
    char *ds_dir[MAX_DATASTORES];
    char *server, *user, *password, *cookie, *thumbprint;
    char *transports;          /* remote modes the "host" offers, colon-separated */
    long fail_read_after;      /* -1: never */
    long fail_write_after;
    long delay_us;
    long drop_connection_after;
    int log_credentials;       /* simulate a chatty library that logs secrets */
    int panic_on_exit;         /* call the panic callback at Exit (and carry on) */
    int no_allocated_blocks;   /* QueryAllocatedBlocks answers "not supported" */
    long transient_read_faults; /* the next N reads fail with a lost NFC connection, then work */
    long hang_read_after;      /* -1: never; the read after N reads never returns */
    long hang_write_after;     /* -1: never; the write after N writes never returns */
    char *stats;
};

struct descriptor {
    uint64_t sectors;
    uint64_t extent_offset;    /* sectors into the flat file */
    char *flat_name;
    int n_meta;
    char *meta_key[MAX_META];
    char *meta_val[MAX_META];
    char *header;              /* everything before the first ddb.* line, verbatim */
};

extern struct standin_config standin_cfg;

int config_load(const char *path, struct standin_config *cfg, char *err, size_t errlen);
void config_free(struct standin_config *cfg);

int descriptor_read(const char *path, struct descriptor *d);   /* 0, or a VIX_E_* code */
int descriptor_write(const char *path, const struct descriptor *d);
void descriptor_free(struct descriptor *d);
const char *descriptor_get(const struct descriptor *d, const char *key);
int descriptor_set(struct descriptor *d, const char *key, const char *value);

const char *error_text(uint64_t code);

#endif
