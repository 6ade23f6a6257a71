/* The stand-in libvixDiskLib.so: the VixDiskLib entry points, backed by local files.
 *
 * Role: let the binding be exercised through the real ABI (same symbols, signatures and struct
 * layouts as VDDK 8) with the rules the real library enforces: InitEx first, sector-granular
 * I/O inside the capacity, read-only handles and connections refuse writes, Close before
 * Disconnect, PrepareForAccess/EndAccess pairing. Datastore paths "[NAME] dir/disk.vmdk" map to
 * local directories by configuration; a connection without a server name is local mode and
 * opens absolute paths. Faults (failed reads/writes, slowness, dropped connections) are
 * injected by configuration, and every I/O can be recorded in a stats file.
 *
 * A disk opened with VIXDISKLIB_FLAG_OPEN_UNBUFFERED is read and written with O_DIRECT where
 * the buffer, offset and length allow it (4 KiB aligned), as a host that does not cache for
 * the caller: the writes of a restore then cost this machine no page-cache copy and no
 * writeback at Flush, as they would not cost the backup host on a real ESXi.
 *
 * Limits: monolithicFlat descriptors with one FLAT extent; Create makes only those; no SAN or
 * hotadd (their names are listed, never chosen); no async I/O.
 */
#define _GNU_SOURCE /* SEEK_DATA, SEEK_HOLE, O_DIRECT */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "standin.h"

#define EXPORT __attribute__((visibility("default")))
#define CONN_MAGIC 0x636f6e6eU
#define DISK_MAGIC 0x6469736bU
#define MAX_PREPARED 256

struct standin_config standin_cfg = {
    .fail_read_after = -1, .fail_write_after = -1, .drop_connection_after = -1,
};

struct standin_conn {
    unsigned magic;
    int local;
    int read_only;
    char *server;
    char *transports;          /* what the caller asked for, or NULL */
    char *snapshot;            /* the snapshot moref of ConnectEx, or NULL */
    long open_disks;           /* guarded by open_lock */
    long io_count;             /* atomic */
    int dropped;               /* atomic */
};

struct standin_disk {
    unsigned magic;
    struct standin_conn *conn;
    char *path;                /* the local descriptor path */
    char *ctk_path;
    int fd;
    int dfd;                   /* the same file with O_DIRECT (unbuffered opens), or -1 */
    int read_only;
    uint64_t sectors;
    uint64_t base;             /* byte offset of the extent in the flat file */
    const char *transport;
    struct descriptor desc;
    pthread_mutex_t meta_lock;
};

static int initialized;
static VixDiskLibGenericLogFunc *log_fn, *warn_fn, *panic_fn;
static int stats_fd = -1;
static long read_calls, write_calls; /* atomic */
static long transient_left;           /* atomic: injected transient read faults still to come */
static uint32_t client_major, client_minor; /* what the caller announced to InitEx */
static pthread_mutex_t open_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static char *prepared_spec[MAX_PREPARED];
static int prepared_count[MAX_PREPARED];

static void emit(VixDiskLibGenericLogFunc *fn, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void emit(VixDiskLibGenericLogFunc *fn, const char *fmt, ...)
{
    if (fn == NULL)
        return;
    va_list ap;
    va_start(ap, fmt);
    fn(fmt, ap);
    va_end(ap);
}

static void stat_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void stat_line(const char *fmt, ...)
{
    if (stats_fd < 0)
        return;
    char line[4400];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 2)
        n = sizeof line - 2;
    line[n++] = '\n';
    if (write(stats_fd, line, n) != n)
        emit(warn_fn, "VixDiskLib: cannot write the stats file: %s\n", strerror(errno));
}

static const char *or_dash(const char *s)
{
    return s && *s ? s : "-";
}

/* ---- library ----------------------------------------------------------------------------- */

EXPORT VixError VixDiskLib_InitEx(uint32_t major, uint32_t minor,
                                  VixDiskLibGenericLogFunc *log, VixDiskLibGenericLogFunc *warn,
                                  VixDiskLibGenericLogFunc *panic, const char *libDir,
                                  const char *configFile)
{
    (void)libDir;
    (void)configFile;
    if (major < 1 || major > 9)
        return VIX_E_NOT_SUPPORTED;
    client_major = major;
    client_minor = minor;
    log_fn = log;
    warn_fn = warn;
    panic_fn = panic;
    char err[512];
    if (config_load(getenv("VDDK_STANDIN_CONFIG"), &standin_cfg, err, sizeof err) != 0) {
        emit(warn_fn, "VixDiskLib: %s\n", err);
        return VIX_E_INVALID_ARG;
    }
    if (standin_cfg.stats != NULL) {
        stats_fd = open(standin_cfg.stats, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (stats_fd < 0) {
            emit(warn_fn, "VixDiskLib: cannot open stats file %s: %s\n", standin_cfg.stats,
                 strerror(errno));
            return VIX_E_FILE_ERROR;
        }
    }
    __atomic_store_n(&read_calls, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&transient_left, standin_cfg.transient_read_faults, __ATOMIC_SEQ_CST);
    __atomic_store_n(&write_calls, 0, __ATOMIC_SEQ_CST);
    initialized = 1;
    emit(log_fn, "VixDiskLib: stand-in %u.%u initialized with %d datastore(s)\n", major, minor,
         standin_cfg.n_datastores);
    stat_line("init %u %u", major, minor);
    return VIX_OK;
}

EXPORT void VixDiskLib_Exit(void)
{
    if (!initialized)
        return;
    pthread_mutex_lock(&state_lock);
    for (int i = 0; i < MAX_PREPARED; i++) {
        if (prepared_spec[i] != NULL && prepared_count[i] > 0)
            emit(warn_fn, "VixDiskLib: PrepareForAccess for %s was never ended (%d open)\n",
                 prepared_spec[i], prepared_count[i]);
        free(prepared_spec[i]);
        prepared_spec[i] = NULL;
        prepared_count[i] = 0;
    }
    pthread_mutex_unlock(&state_lock);
    stat_line("exit");
    if (standin_cfg.panic_on_exit) /* the real library would abort after this */
        emit(panic_fn, "VixDiskLib: panic requested by %s (%d)\n", "panic_on_exit", 1);
    emit(log_fn, "VixDiskLib: exiting\n");
    if (stats_fd >= 0)
        close(stats_fd);
    stats_fd = -1;
    config_free(&standin_cfg);
    initialized = 0;
}

EXPORT const char *VixDiskLib_ListTransportModes(void)
{
    return "file:san:hotadd:nbdssl:nbd";
}

EXPORT char *VixDiskLib_GetErrorText(VixError err, const char *locale)
{
    (void)locale;
    return strdup(error_text(err & 0xFFFF));
}

EXPORT void VixDiskLib_FreeErrorText(char *text)
{
    free(text);
}

/* Built with -DSTANDIN_VDDK_6_5 the stand-in lacks the functions VDDK 6.7 added, so that
 * the binding's degraded paths can be tested. */
#ifndef STANDIN_VDDK_6_5
EXPORT VixDiskLibConnectParams *VixDiskLib_AllocateConnectParams(void)
{
    return calloc(1, sizeof(VixDiskLibConnectParams));
}
#endif

/* Frees the structure only: the strings in it belong to whoever set them. */
EXPORT void VixDiskLib_FreeConnectParams(VixDiskLibConnectParams *params)
{
    free(params);
}

/* ---- connections ------------------------------------------------------------------------- */

static int is_remote(const VixDiskLibConnectParams *p)
{
    return p != NULL && p->serverName != NULL && *p->serverName != '\0';
}

static int same_thumbprint(const char *a, const char *b)
{
    return a != NULL && b != NULL && strcasecmp(a, b) == 0;
}

/* What a vCenter would check on login: the host, its certificate, the credentials. */
static VixError authenticate(const VixDiskLibConnectParams *p)
{
    const struct standin_config *c = &standin_cfg;
    if (c->server != NULL && strcmp(c->server, p->serverName) != 0)
        return VIX_E_CANNOT_CONNECT_TO_HOST;
    if (c->thumbprint != NULL && !same_thumbprint(c->thumbprint, p->thumbPrint))
        return VIX_E_NET_HTTP_SSL_SECURITY;
    if (c->log_credentials && p->credType == VIXDISKLIB_CRED_UID)
        emit(log_fn, "VixDiskLib: login %s password %s\n", or_dash(p->creds.uid.userName),
             or_dash(p->creds.uid.password));
    if (c->log_credentials && p->credType == VIXDISKLIB_CRED_SESSIONID)
        emit(log_fn, "VixDiskLib: session cookie %s\n", or_dash(p->creds.sessionId.cookie));
    switch (p->credType) {
    case VIXDISKLIB_CRED_UID:
        if (c->user != NULL && (p->creds.uid.userName == NULL ||
                                strcmp(c->user, p->creds.uid.userName) != 0))
            return VIX_E_HOST_USER_PERMISSIONS;
        if (c->password != NULL && (p->creds.uid.password == NULL ||
                                    strcmp(c->password, p->creds.uid.password) != 0))
            return VIX_E_HOST_USER_PERMISSIONS;
        return VIX_OK;
    case VIXDISKLIB_CRED_SESSIONID:
        if (c->cookie != NULL && (p->creds.sessionId.cookie == NULL ||
                                  strcmp(c->cookie, p->creds.sessionId.cookie) != 0))
            return VIX_E_HOST_USER_PERMISSIONS;
        if (c->cookie == NULL && c->password != NULL)
            return VIX_E_HOST_USER_PERMISSIONS; /* the host expects a password login */
        return VIX_OK;
    default:
        return VIX_E_NOT_SUPPORTED;
    }
}

static VixError check_vmx_spec(const VixDiskLibConnectParams *p)
{
    if (p->specType == VIXDISKLIB_SPEC_VSTORAGE_OBJECT)
        return p->spec.vStorageObjSpec.id != NULL ? VIX_OK : VIX_E_INVALID_ARG;
    if (p->vmxSpec == NULL || strncmp(p->vmxSpec, "moref=", 6) != 0 || p->vmxSpec[6] == '\0')
        return VIX_E_INVALID_ARG;
    return VIX_OK;
}

EXPORT VixError VixDiskLib_ConnectEx(const VixDiskLibConnectParams *params, Bool readOnly,
                                     const char *snapshotRef, const char *transportModes,
                                     VixDiskLibConnection *connection)
{
    if (!initialized)
        return VIX_E_DISK_NOINIT;
    if (connection == NULL)
        return VIX_E_INVALID_ARG;
    *connection = NULL;
    int remote = is_remote(params);
    if (remote) {
        VixError e = check_vmx_spec(params);
        if (e == VIX_OK)
            e = authenticate(params);
        if (e != VIX_OK) {
            emit(warn_fn, "VixDiskLib: cannot connect to %s: %s\n", params->serverName,
                 error_text(e));
            return e;
        }
    }
    struct standin_conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return VIX_E_OUT_OF_MEMORY;
    c->magic = CONN_MAGIC;
    c->local = !remote;
    c->read_only = readOnly != 0;
    c->server = strdup(remote ? params->serverName : "local");
    c->transports = transportModes ? strdup(transportModes) : NULL;
    c->snapshot = snapshotRef && *snapshotRef ? strdup(snapshotRef) : NULL;
    emit(log_fn, "VixDiskLib: connected to %s (read-only %d, snapshot %s, modes %s)\n", c->server,
         c->read_only, or_dash(snapshotRef), or_dash(transportModes));
    stat_line("connect %s %s %d %s %s", c->server, remote ? or_dash(params->vmxSpec) : "-",
              c->read_only, or_dash(snapshotRef), or_dash(transportModes));
    *connection = c;
    return VIX_OK;
}

static int valid_conn(const struct standin_conn *c)
{
    return c != NULL && c->magic == CONN_MAGIC;
}

EXPORT VixError VixDiskLib_Disconnect(VixDiskLibConnection connection)
{
    if (!initialized)
        return VIX_E_DISK_NOINIT;
    if (!valid_conn(connection))
        return VIX_E_DISK_INVALID_CONNECTION;
    pthread_mutex_lock(&open_lock);
    long open_disks = connection->open_disks;
    pthread_mutex_unlock(&open_lock);
    if (open_disks > 0) {
        emit(warn_fn, "VixDiskLib: Disconnect with %ld disk(s) still open\n", open_disks);
        return VIX_E_OBJECT_IS_BUSY;
    }
    stat_line("disconnect %s", connection->server);
    connection->magic = 0;
    free(connection->server);
    free(connection->transports);
    free(connection->snapshot);
    free(connection);
    return VIX_OK;
}

EXPORT VixError VixDiskLib_Cleanup(const VixDiskLibConnectParams *params, uint32_t *numCleanedUp,
                                   uint32_t *numRemaining)
{
    (void)params;
    if (!initialized)
        return VIX_E_DISK_NOINIT;
    if (numCleanedUp)
        *numCleanedUp = 0;
    if (numRemaining)
        *numRemaining = 0;
    return VIX_OK;
}

/* ---- prepare / end access ---------------------------------------------------------------- */

static const char *access_key(const VixDiskLibConnectParams *p)
{
    return p->specType == VIXDISKLIB_SPEC_VSTORAGE_OBJECT ? p->spec.vStorageObjSpec.id
                                                          : p->vmxSpec;
}

EXPORT VixError VixDiskLib_PrepareForAccess(const VixDiskLibConnectParams *params,
                                            const char *identity)
{
    if (!initialized)
        return VIX_E_DISK_NOINIT;
    if (!is_remote(params) || identity == NULL)
        return VIX_E_INVALID_ARG;
    VixError e = check_vmx_spec(params);
    if (e == VIX_OK)
        e = authenticate(params);
    if (e != VIX_OK)
        return e;
    const char *key = access_key(params);
    pthread_mutex_lock(&state_lock);
    int slot = -1;
    for (int i = 0; i < MAX_PREPARED && slot < 0; i++)
        if (prepared_spec[i] != NULL && strcmp(prepared_spec[i], key) == 0)
            slot = i;
    for (int i = 0; i < MAX_PREPARED && slot < 0; i++)
        if (prepared_spec[i] == NULL) {
            prepared_spec[i] = strdup(key);
            slot = i;
        }
    if (slot >= 0)
        prepared_count[slot]++;
    pthread_mutex_unlock(&state_lock);
    if (slot < 0)
        return VIX_E_OUT_OF_MEMORY;
    emit(log_fn, "VixDiskLib: prepared %s for access by %s\n", key, identity);
    stat_line("prepare %s %s", key, identity);
    return VIX_OK;
}

EXPORT VixError VixDiskLib_EndAccess(const VixDiskLibConnectParams *params, const char *identity)
{
    if (!initialized)
        return VIX_E_DISK_NOINIT;
    if (!is_remote(params) || identity == NULL)
        return VIX_E_INVALID_ARG;
    VixError e = check_vmx_spec(params);
    if (e == VIX_OK)
        e = authenticate(params);
    if (e != VIX_OK)
        return e;
    const char *key = access_key(params);
    int paired = 0;
    pthread_mutex_lock(&state_lock);
    for (int i = 0; i < MAX_PREPARED; i++)
        if (prepared_spec[i] != NULL && strcmp(prepared_spec[i], key) == 0 &&
            prepared_count[i] > 0) {
            paired = 1;
            if (--prepared_count[i] == 0) {
                free(prepared_spec[i]);
                prepared_spec[i] = NULL;
            }
            break;
        }
    pthread_mutex_unlock(&state_lock);
    /* Like vCenter, ending an access that was never prepared is harmless: warn only. */
    if (!paired)
        emit(warn_fn, "VixDiskLib: EndAccess for %s without PrepareForAccess\n", key);
    stat_line("end %s %s%s", key, identity, paired ? "" : " unpaired");
    return VIX_OK;
}

/* ---- disks ------------------------------------------------------------------------------- */

/* "[NAME] dir/disk.vmdk" -> "<dir of NAME>/dir/disk.vmdk" for remote connections; local mode
 * takes absolute paths as they are. */
static VixError map_path(const struct standin_conn *c, const char *path, char **out)
{
    *out = NULL;
    if (c->local) {
        if (path[0] != '/')
            return VIX_E_FILE_NOT_FOUND;
        *out = strdup(path);
        return *out ? VIX_OK : VIX_E_OUT_OF_MEMORY;
    }
    const char *close = path[0] == '[' ? strchr(path, ']') : NULL;
    if (close == NULL)
        return VIX_E_INVALID_ARG;
    size_t nlen = (size_t)(close - path - 1);
    const char *rest = close + 1;
    while (*rest == ' ')
        rest++;
    if (strstr(rest, "..") != NULL)
        return VIX_E_INVALID_ARG;
    for (int i = 0; i < standin_cfg.n_datastores; i++) {
        if (strlen(standin_cfg.ds_name[i]) == nlen &&
            strncmp(standin_cfg.ds_name[i], path + 1, nlen) == 0) {
            size_t len = strlen(standin_cfg.ds_dir[i]) + strlen(rest) + 2;
            *out = malloc(len);
            if (*out == NULL)
                return VIX_E_OUT_OF_MEMORY;
            snprintf(*out, len, "%s/%s", standin_cfg.ds_dir[i], rest);
            return VIX_OK;
        }
    }
    return VIX_E_FILE_NOT_FOUND;
}

/* The first mode of the caller's list that this "host" offers (nbdssl and nbd unless the
 * configuration says otherwise); local disks are always "file". */
static const char *choose_transport(const struct standin_conn *c)
{
    static const char *known[] = {"file", "san", "hotadd", "nbdssl", "nbd"};
    if (c->local)
        return "file";
    const char *offered = standin_cfg.transports ? standin_cfg.transports : "nbdssl:nbd";
    const char *wanted = c->transports ? c->transports : "file:san:hotadd:nbdssl:nbd";
    char *w = strdup(wanted), *save = NULL;
    const char *chosen = NULL;
    for (char *m = strtok_r(w, ":", &save); m && !chosen; m = strtok_r(NULL, ":", &save)) {
        char *o = strdup(offered), *save2 = NULL;
        for (char *x = strtok_r(o, ":", &save2); x && !chosen; x = strtok_r(NULL, ":", &save2))
            if (strcmp(x, m) == 0)
                for (size_t i = 0; i < sizeof known / sizeof *known; i++)
                    if (strcmp(known[i], m) == 0)
                        chosen = known[i];
        free(o);
    }
    free(w);
    return chosen;
}

static char *sibling(const char *path, const char *name)
{
    const char *slash = strrchr(path, '/');
    size_t dlen = slash ? (size_t)(slash - path + 1) : 0;
    char *s = malloc(dlen + strlen(name) + 1);
    if (s) {
        memcpy(s, path, dlen);
        strcpy(s + dlen, name);
    }
    return s;
}

/* "/ds/vm1/disk.vmdk" -> "/ds/vm1/disk-ctk.log" */
static char *ctk_log_path(const char *path)
{
    size_t len = strlen(path);
    if (len > 5 && strcmp(path + len - 5, ".vmdk") == 0)
        len -= 5;
    char *s = malloc(len + sizeof "-ctk.log");
    if (s) {
        memcpy(s, path, len);
        strcpy(s + len, "-ctk.log");
    }
    return s;
}

static void free_disk(struct standin_disk *d)
{
    if (d->fd >= 0)
        close(d->fd);
    if (d->dfd >= 0)
        close(d->dfd);
    descriptor_free(&d->desc);
    pthread_mutex_destroy(&d->meta_lock);
    free(d->path);
    free(d->ctk_path);
    d->magic = 0;
    free(d);
}

static VixError open_locked(struct standin_conn *c, const char *path, uint32_t flags,
                            struct standin_disk **out)
{
    struct standin_disk *d = calloc(1, sizeof *d);
    if (d == NULL)
        return VIX_E_OUT_OF_MEMORY;
    d->fd = -1;
    d->dfd = -1;
    pthread_mutex_init(&d->meta_lock, NULL);
    VixError e = map_path(c, path, &d->path);
    if (e == VIX_OK)
        e = descriptor_read(d->path, &d->desc);
    if (e == VIX_OK && (d->transport = choose_transport(c)) == NULL)
        e = VIX_E_NOT_SUPPORTED;
    char *flat = NULL;
    if (e == VIX_OK && (flat = d->desc.flat_name[0] == '/'
                                   ? strdup(d->desc.flat_name)
                                   : sibling(d->path, d->desc.flat_name)) == NULL)
        e = VIX_E_OUT_OF_MEMORY;
    if (e == VIX_OK && c->snapshot != NULL) {
        /* A snapshot freezes the disk: what was written after CreateSnapshot went to a delta
         * on a real host. The test vCenter keeps the frozen state in
         * "<descriptor without .vmdk>-<snapshot moref>.frozen"; read that when it exists. */
        size_t n = strlen(d->path);
        char *frozen = malloc(n + strlen(c->snapshot) + 16);
        if (frozen == NULL)
            e = VIX_E_OUT_OF_MEMORY;
        else {
            snprintf(frozen, n + strlen(c->snapshot) + 16, "%.*s-%s.frozen",
                     (int)(n > 5 ? n - 5 : n), d->path, c->snapshot);
            if (access(frozen, F_OK) == 0) {
                free(flat);
                flat = frozen;
                flags |= VIXDISKLIB_FLAG_OPEN_READ_ONLY; /* a snapshot's disk is not written */
            } else
                free(frozen);
        }
    }
    if (e == VIX_OK) {
        d->read_only = (flags & VIXDISKLIB_FLAG_OPEN_READ_ONLY) != 0;
        d->fd = open(flat, (d->read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
        if (d->fd < 0)
            e = errno == ENOENT ? VIX_E_FILE_NOT_FOUND
                : errno == EACCES || errno == EROFS ? VIX_E_FILE_READ_ONLY : VIX_E_FILE_ERROR;
        /* A file system without O_DIRECT (tmpfs) refuses the open: buffered I/O then. */
        else if (flags & VIXDISKLIB_FLAG_OPEN_UNBUFFERED)
            d->dfd = open(flat, (d->read_only ? O_RDONLY : O_RDWR) | O_DIRECT | O_CLOEXEC);
    }
    free(flat);
    if (e != VIX_OK) {
        free_disk(d);
        return e;
    }
    d->magic = DISK_MAGIC;
    d->conn = c;
    d->sectors = d->desc.sectors;
    d->base = d->desc.extent_offset * VIXDISKLIB_SECTOR_SIZE;
    d->ctk_path = ctk_log_path(d->path);
    *out = d;
    return VIX_OK;
}

EXPORT VixError VixDiskLib_Open(const VixDiskLibConnection connection, const char *path,
                                uint32_t flags, VixDiskLibHandle *handle)
{
    if (!initialized)
        return VIX_E_DISK_NOINIT;
    if (handle == NULL || path == NULL)
        return VIX_E_INVALID_ARG;
    *handle = NULL;
    if (!valid_conn(connection))
        return VIX_E_DISK_INVALID_CONNECTION;
    /* Open and Close are not thread-safe in the real library; catch callers that overlap. */
    if (pthread_mutex_trylock(&open_lock) != 0) {
        emit(warn_fn, "VixDiskLib: Open called while another Open/Close is running\n");
        return VIX_E_OBJECT_IS_BUSY;
    }
    struct standin_disk *d = NULL;
    VixError e = open_locked(connection, path, flags, &d);
    if (e == VIX_OK)
        connection->open_disks++;
    pthread_mutex_unlock(&open_lock);
    if (e != VIX_OK) {
        emit(warn_fn, "VixDiskLib: cannot open %s: %s\n", path, error_text(e));
        return e;
    }
    emit(log_fn, "VixDiskLib: opened %s (%llu sectors, %s, flags %u)\n", path,
         (unsigned long long)d->sectors, d->transport, flags);
    stat_line("open %s %u %s", d->path, flags, d->transport);
    *handle = d;
    return VIX_OK;
}

#define DIRECT_ALIGN 4096 /* the largest logical block size O_DIRECT may require */

/* The descriptor for I/O of ``len`` bytes at ``buf`` and file offset ``off``: the O_DIRECT one
 * when the disk has it and all three are aligned, else the buffered one. */
static int io_fd(const struct standin_disk *d, const void *buf, off_t off, size_t len)
{
    if (d->dfd >= 0 && (uintptr_t)buf % DIRECT_ALIGN == 0 && off % DIRECT_ALIGN == 0 &&
        len % DIRECT_ALIGN == 0)
        return d->dfd;
    return d->fd;
}

static int valid_disk(const struct standin_disk *d)
{
    return d != NULL && d->magic == DISK_MAGIC;
}

EXPORT VixError VixDiskLib_Close(VixDiskLibHandle handle)
{
    if (!initialized)
        return VIX_E_DISK_NOINIT;
    if (!valid_disk(handle))
        return VIX_E_INVALID_HANDLE;
    if (pthread_mutex_trylock(&open_lock) != 0) {
        emit(warn_fn, "VixDiskLib: Close called while another Open/Close is running\n");
        return VIX_E_OBJECT_IS_BUSY;
    }
    handle->conn->open_disks--;
    stat_line("close %s", handle->path);
    free_disk(handle);
    pthread_mutex_unlock(&open_lock);
    return VIX_OK;
}

EXPORT const char *VixDiskLib_GetTransportMode(VixDiskLibHandle handle)
{
    return valid_disk(handle) ? handle->transport : NULL;
}

static VixDiskLibAdapterType adapter_of(const char *name)
{
    if (name == NULL)
        return VIXDISKLIB_ADAPTER_UNKNOWN;
    if (strcmp(name, "ide") == 0)
        return VIXDISKLIB_ADAPTER_IDE;
    if (strcmp(name, "buslogic") == 0)
        return VIXDISKLIB_ADAPTER_SCSI_BUSLOGIC;
    if (strcmp(name, "lsilogic") == 0)
        return VIXDISKLIB_ADAPTER_SCSI_LSILOGIC;
    return VIXDISKLIB_ADAPTER_UNKNOWN;
}

static uint32_t meta_u32(const struct descriptor *d, const char *key, uint32_t fallback)
{
    const char *v = descriptor_get(d, key);
    return v ? (uint32_t)strtoul(v, NULL, 10) : fallback;
}

EXPORT VixError VixDiskLib_GetInfo(VixDiskLibHandle handle, VixDiskLibInfo **info)
{
    if (!initialized)
        return VIX_E_DISK_NOINIT;
    if (!valid_disk(handle))
        return VIX_E_INVALID_HANDLE;
    if (info == NULL)
        return VIX_E_INVALID_ARG;
    /* The caller's shape: a 6.7 caller's info ends before the sector sizes. */
    int v7 = client_major >= 7;
    VixDiskLibInfo *i = calloc(1, v7 ? sizeof *i : INFO_SIZE_6_7);
    if (i == NULL)
        return VIX_E_OUT_OF_MEMORY;
    pthread_mutex_lock(&handle->meta_lock);
    const struct descriptor *d = &handle->desc;
    uint32_t heads = meta_u32(d, "geometry.heads", 255), secs = meta_u32(d, "geometry.sectors", 63);
    uint64_t per_cyl = (uint64_t)heads * secs;
    uint64_t cyl = handle->sectors / (per_cyl != 0 ? per_cyl : 1);
    i->physGeo.cylinders = meta_u32(d, "geometry.cylinders", cyl > 65535 ? 65535 : (uint32_t)cyl);
    i->physGeo.heads = heads;
    i->physGeo.sectors = secs;
    i->biosGeo.cylinders = meta_u32(d, "geometry.biosCylinders", i->physGeo.cylinders);
    i->biosGeo.heads = meta_u32(d, "geometry.biosHeads", heads);
    i->biosGeo.sectors = meta_u32(d, "geometry.biosSectors", secs);
    i->capacity = handle->sectors;
    i->adapterType = adapter_of(descriptor_get(d, "adapterType"));
    i->numLinks = 1;
    const char *uuid = descriptor_get(d, "uuid");
    i->uuid = uuid ? strdup(uuid) : NULL;
    if (v7) {
        i->logicalSectorSize = meta_u32(d, "logicalSectorSize", 512);
        i->physicalSectorSize = meta_u32(d, "physicalSectorSize", i->logicalSectorSize);
    }
    pthread_mutex_unlock(&handle->meta_lock);
    *info = i;
    return VIX_OK;
}

EXPORT void VixDiskLib_FreeInfo(VixDiskLibInfo *info)
{
    if (info == NULL)
        return;
    free(info->parentFileNameHint);
    free(info->uuid);
    free(info);
}

/* Common checks of Read and Write; the fault counters are per process and reset by InitEx. */
static VixError io_check(struct standin_disk *d, uint64_t start, uint64_t n, const void *buf)
{
    if (!initialized)
        return VIX_E_DISK_NOINIT;
    if (!valid_disk(d))
        return VIX_E_INVALID_HANDLE;
    if (buf == NULL)
        return VIX_E_INVALID_ARG;
    if (start > d->sectors || n > d->sectors - start)
        return VIX_E_DISK_OUTOFRANGE;
    if (__atomic_load_n(&d->conn->dropped, __ATOMIC_SEQ_CST))
        return VIX_E_HOST_TCP_CONN_LOST;
    long io = __atomic_add_fetch(&d->conn->io_count, 1, __ATOMIC_SEQ_CST);
    if (!d->conn->local && standin_cfg.drop_connection_after >= 0 &&
        io > standin_cfg.drop_connection_after) {
        __atomic_store_n(&d->conn->dropped, 1, __ATOMIC_SEQ_CST);
        emit(warn_fn, "VixDiskLib: connection to %s lost (injected)\n", d->conn->server);
        return VIX_E_HOST_TCP_CONN_LOST;
    }
    if (standin_cfg.delay_us > 0) {
        struct timespec ts = {standin_cfg.delay_us / 1000000,
                              (standin_cfg.delay_us % 1000000) * 1000};
        nanosleep(&ts, NULL);
    }
    return VIX_OK;
}

EXPORT VixError VixDiskLib_Read(VixDiskLibHandle handle, uint64_t startSector, uint64_t numSectors,
                                uint8_t *readBuffer)
{
    VixError e = io_check(handle, startSector, numSectors, readBuffer);
    if (e != VIX_OK)
        return e;
    long nth = __atomic_add_fetch(&read_calls, 1, __ATOMIC_SEQ_CST);
    if (standin_cfg.hang_read_after >= 0 && nth > standin_cfg.hang_read_after) {
        /* A call that never returns, as a stuck NFC session does: only killing the process
         * that made it ends it. */
        emit(warn_fn, "VixDiskLib: read %ld of %s hangs (injected)\n", nth, handle->path);
        stat_line("hang %s", handle->path);
        for (;;)
            pause();
    }
    if (__atomic_load_n(&transient_left, __ATOMIC_SEQ_CST) > 0 &&
        __atomic_sub_fetch(&transient_left, 1, __ATOMIC_SEQ_CST) >= 0) {
        emit(warn_fn, "VixDiskLib: NFC connection for %s reset (injected, transient)\n",
             handle->path);
        stat_line("transient %s", handle->path);
        return VIX_E_HOST_TCP_CONN_LOST;
    }
    if (standin_cfg.fail_read_after >= 0 && nth > standin_cfg.fail_read_after) {
        emit(warn_fn, "VixDiskLib: read %ld of %s fails (injected)\n", nth, handle->path);
        return VIX_E_FILE_ERROR;
    }
    size_t len = numSectors * VIXDISKLIB_SECTOR_SIZE, done = 0;
    off_t off = (off_t)(handle->base + startSector * VIXDISKLIB_SECTOR_SIZE);
    while (done < len) {
        ssize_t r = pread(io_fd(handle, readBuffer + done, off + (off_t)done, len - done),
                          readBuffer + done, len - done, off + (off_t)done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return VIX_E_FILE_ERROR;
        if (r == 0) { /* a flat file shorter than the capacity reads as zeros */
            memset(readBuffer + done, 0, len - done);
            break;
        }
        done += (size_t)r;
    }
    stat_line("read %s %llu %zu", handle->path,
              (unsigned long long)startSector * VIXDISKLIB_SECTOR_SIZE, len);
    return VIX_OK;
}

static void ctk_append(const struct standin_disk *d, uint64_t offset, uint64_t length)
{
    int fd = open(d->ctk_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        emit(warn_fn, "VixDiskLib: cannot open %s: %s\n", d->ctk_path, strerror(errno));
        return;
    }
    char line[64];
    int n = snprintf(line, sizeof line, "%llu %llu\n", (unsigned long long)offset,
                     (unsigned long long)length);
    if (write(fd, line, n) != n)
        emit(warn_fn, "VixDiskLib: cannot write %s\n", d->ctk_path);
    close(fd);
}

EXPORT VixError VixDiskLib_Write(VixDiskLibHandle handle, uint64_t startSector,
                                 uint64_t numSectors, const uint8_t *writeBuffer)
{
    if (initialized && valid_disk(handle) && (handle->read_only || handle->conn->read_only))
        return VIX_E_FILE_READ_ONLY;
    VixError e = io_check(handle, startSector, numSectors, writeBuffer);
    if (e != VIX_OK)
        return e;
    long nth = __atomic_add_fetch(&write_calls, 1, __ATOMIC_SEQ_CST);
    if (standin_cfg.hang_write_after >= 0 && nth > standin_cfg.hang_write_after) {
        emit(warn_fn, "VixDiskLib: write %ld of %s hangs (injected)\n", nth, handle->path);
        stat_line("hang %s", handle->path);
        for (;;)
            pause();
    }
    if (standin_cfg.fail_write_after >= 0 && nth > standin_cfg.fail_write_after) {
        emit(warn_fn, "VixDiskLib: write %ld of %s fails (injected)\n", nth, handle->path);
        return VIX_E_FILE_ERROR;
    }
    size_t len = numSectors * VIXDISKLIB_SECTOR_SIZE, done = 0;
    off_t off = (off_t)(handle->base + startSector * VIXDISKLIB_SECTOR_SIZE);
    while (done < len) {
        ssize_t r = pwrite(io_fd(handle, writeBuffer + done, off + (off_t)done, len - done),
                           writeBuffer + done, len - done, off + (off_t)done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return errno == ENOSPC ? VIX_E_DISK_FULL : VIX_E_FILE_ERROR;
        done += (size_t)r;
    }
    uint64_t offset_bytes = startSector * VIXDISKLIB_SECTOR_SIZE;
    if (len > 0)
        ctk_append(handle, offset_bytes, len);
    stat_line("write %s %llu %zu", handle->path, (unsigned long long)offset_bytes, len);
    return VIX_OK;
}

EXPORT VixError VixDiskLib_Flush(VixDiskLibHandle handle)
{
    if (!initialized)
        return VIX_E_DISK_NOINIT;
    if (!valid_disk(handle))
        return VIX_E_INVALID_HANDLE;
    if (!handle->read_only && fdatasync(handle->fd) != 0)
        return VIX_E_FILE_ERROR;
    return VIX_OK;
}

/* ---- allocated blocks -------------------------------------------------------------------- */
#ifndef STANDIN_VDDK_6_5

EXPORT VixError VixDiskLib_QueryAllocatedBlocks(VixDiskLibHandle handle, uint64_t startSector,
                                                uint64_t numSectors, uint64_t chunkSize,
                                                VixDiskLibBlockList **blockList)
{
    if (!initialized)
        return VIX_E_DISK_NOINIT;
    if (!valid_disk(handle))
        return VIX_E_INVALID_HANDLE;
    if (standin_cfg.no_allocated_blocks) /* as some transports and disk types answer */
        return VIX_E_NOT_SUPPORTED;
    if (blockList == NULL || chunkSize < VIXDISKLIB_MIN_CHUNK_SIZE ||
        chunkSize > STANDIN_MAX_CHUNK_SIZE || startSector % chunkSize)
        return VIX_E_INVALID_ARG;
    if (startSector > handle->sectors || numSectors > handle->sectors - startSector)
        return VIX_E_DISK_OUTOFRANGE;
    /* Whole chunks only, as the real library wants: a partial last chunk is the caller's. */
    if (numSectors == 0 || numSectors % chunkSize != 0)
        return VIX_E_INVALID_ARG;
    uint64_t nchunks = numSectors / chunkSize;
    if (nchunks > VIXDISKLIB_MAX_CHUNK_NUMBER)
        return VIX_E_INVALID_ARG;
    size_t cap = 16;
    VixDiskLibBlockList *list = malloc(offsetof(VixDiskLibBlockList, blocks) +
                                       cap * sizeof(VixDiskLibBlock));
    if (list == NULL)
        return VIX_E_OUT_OF_MEMORY;
    list->numBlocks = 0;
    const uint64_t ss = VIXDISKLIB_SECTOR_SIZE, end = startSector + numSectors;
    uint64_t sector = startSector;
    while (sector < end) {
        off_t data = lseek(handle->fd, (off_t)(handle->base + sector * ss), SEEK_DATA);
        if (data < 0 && errno == ENXIO)
            break;
        if (data < 0) { /* no SEEK_DATA here: everything is data */
            data = (off_t)(handle->base + sector * ss);
        }
        uint64_t dsec = ((uint64_t)data - handle->base) / ss;
        if (dsec >= end)
            break;
        off_t hole = lseek(handle->fd, data, SEEK_HOLE);
        uint64_t hsec = hole < 0 ? end : ((uint64_t)hole - handle->base + ss - 1) / ss;
        /* Round out to chunk boundaries relative to startSector. */
        uint64_t cstart = startSector + (dsec - startSector) / chunkSize * chunkSize;
        uint64_t cend = startSector + (hsec - startSector + chunkSize - 1) / chunkSize * chunkSize;
        if (cend > end)
            cend = end;
        if (list->numBlocks > 0) {
            VixDiskLibBlock *last = &list->blocks[list->numBlocks - 1];
            if (last->offset + last->length >= cstart) {
                last->length = cend - last->offset;
                sector = cend;
                continue;
            }
        }
        if (list->numBlocks == cap) {
            cap *= 2;
            VixDiskLibBlockList *bigger = realloc(list, offsetof(VixDiskLibBlockList, blocks) +
                                                            cap * sizeof(VixDiskLibBlock));
            if (bigger == NULL) {
                free(list);
                return VIX_E_OUT_OF_MEMORY;
            }
            list = bigger;
        }
        list->blocks[list->numBlocks].offset = cstart;
        list->blocks[list->numBlocks].length = cend - cstart;
        list->numBlocks++;
        sector = cend;
    }
    *blockList = list;
    return VIX_OK;
}

EXPORT VixError VixDiskLib_FreeBlockList(VixDiskLibBlockList *blockList)
{
    free(blockList);
    return VIX_OK;
}
#endif

/* ---- metadata ---------------------------------------------------------------------------- */

EXPORT VixError VixDiskLib_GetMetadataKeys(VixDiskLibHandle handle, char *keys, size_t maxLen,
                                           size_t *requiredLen)
{
    if (!initialized)
        return VIX_E_DISK_NOINIT;
    if (!valid_disk(handle))
        return VIX_E_INVALID_HANDLE;
    pthread_mutex_lock(&handle->meta_lock);
    size_t need = 1;
    for (int i = 0; i < handle->desc.n_meta; i++)
        need += strlen(handle->desc.meta_key[i]) + 1;
    if (requiredLen)
        *requiredLen = need;
    VixError e = VIX_OK;
    if (keys != NULL && maxLen < need)
        e = VIX_E_BUFFER_TOOSMALL;
    else if (keys != NULL) {
        char *p = keys;
        for (int i = 0; i < handle->desc.n_meta; i++) {
            size_t l = strlen(handle->desc.meta_key[i]) + 1;
            memcpy(p, handle->desc.meta_key[i], l);
            p += l;
        }
        *p = '\0';
    }
    pthread_mutex_unlock(&handle->meta_lock);
    return e;
}

EXPORT VixError VixDiskLib_ReadMetadata(VixDiskLibHandle handle, const char *key, char *buf,
                                        size_t bufLen, size_t *requiredLen)
{
    if (!initialized)
        return VIX_E_DISK_NOINIT;
    if (!valid_disk(handle))
        return VIX_E_INVALID_HANDLE;
    if (key == NULL)
        return VIX_E_INVALID_ARG;
    pthread_mutex_lock(&handle->meta_lock);
    const char *v = descriptor_get(&handle->desc, key);
    VixError e = VIX_OK;
    if (v == NULL)
        e = VIX_E_DISK_KEY_NOTFOUND;
    else {
        size_t need = strlen(v) + 1;
        if (requiredLen)
            *requiredLen = need;
        if (buf != NULL && bufLen < need)
            e = VIX_E_BUFFER_TOOSMALL;
        else if (buf != NULL)
            memcpy(buf, v, need);
    }
    pthread_mutex_unlock(&handle->meta_lock);
    return e;
}

EXPORT VixError VixDiskLib_WriteMetadata(VixDiskLibHandle handle, const char *key,
                                         const char *val)
{
    if (!initialized)
        return VIX_E_DISK_NOINIT;
    if (!valid_disk(handle))
        return VIX_E_INVALID_HANDLE;
    if (key == NULL || val == NULL || *key == '\0' || strpbrk(key, "=\"\n ") ||
        strpbrk(val, "\"\n"))
        return VIX_E_INVALID_ARG;
    if (handle->read_only || handle->conn->read_only)
        return VIX_E_FILE_READ_ONLY;
    pthread_mutex_lock(&handle->meta_lock);
    VixError e = descriptor_set(&handle->desc, key, val);
    if (e == VIX_OK)
        e = descriptor_write(handle->path, &handle->desc);
    pthread_mutex_unlock(&handle->meta_lock);
    return e;
}

/* ---- create ------------------------------------------------------------------------------ */

static const char *adapter_name(VixDiskLibAdapterType t)
{
    switch (t) {
    case VIXDISKLIB_ADAPTER_IDE: return "ide";
    case VIXDISKLIB_ADAPTER_SCSI_BUSLOGIC: return "buslogic";
    default: return "lsilogic";
    }
}

EXPORT VixError VixDiskLib_Create(const VixDiskLibConnection connection, const char *path,
                                  const VixDiskLibCreateParams *createParams,
                                  VixDiskLibProgressFunc progressFunc, void *progressCallbackData)
{
    if (!initialized)
        return VIX_E_DISK_NOINIT;
    if (!valid_conn(connection))
        return VIX_E_DISK_INVALID_CONNECTION;
    if (path == NULL || createParams == NULL)
        return VIX_E_INVALID_ARG;
    if (!connection->local) /* as in the real library: remote disks are made by vCenter */
        return VIX_E_NOT_SUPPORTED;
    if (createParams->diskType != VIXDISKLIB_DISK_MONOLITHIC_FLAT)
        return VIX_E_NOT_SUPPORTED;
    if (createParams->hwVersion > VIXDISKLIB_HWVERSION_NEWEST) {
        emit(warn_fn, "VixDiskLib: hardware version %u is not one this library defines\n",
             createParams->hwVersion);
        return VIX_E_INVALID_ARG;
    }
    uint32_t lss = 512, pss = 512;
    if (client_major >= 7) {
        /* A 7.0 caller's parameters are 32 bytes: the sector sizes must be ones we know. A
         * caller that allocated the 6.7 shape (24 bytes) lands here with stray bytes. */
        lss = createParams->logicalSectorSize;
        pss = createParams->physicalSectorSize;
        if ((lss != 512 && lss != 4096) || (pss != 512 && pss != 4096) || pss < lss) {
            emit(warn_fn, "VixDiskLib: invalid sector sizes %u/%u in the create parameters\n",
                 lss, pss);
            return VIX_E_INVALID_ARG;
        }
        if ((createParams->capacity * VIXDISKLIB_SECTOR_SIZE) % lss != 0)
            return VIX_E_INVALID_ARG;
    }
    size_t len = strlen(path);
    if (path[0] != '/' || len < 6 || strcmp(path + len - 5, ".vmdk") != 0 ||
        createParams->capacity == 0)
        return VIX_E_INVALID_ARG;
    if (progressFunc)
        progressFunc(progressCallbackData, 0);
    /* name-flat.vmdk beside name.vmdk */
    const char *base = strrchr(path, '/') + 1;
    char flat_name[1024], flat_path[4200];
    snprintf(flat_name, sizeof flat_name, "%.*s-flat.vmdk", (int)(strlen(base) - 5), base);
    snprintf(flat_path, sizeof flat_path, "%.*s%s", (int)(base - path), path, flat_name);
    int dfd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (dfd < 0)
        return errno == EEXIST ? VIX_E_FILE_ALREADY_EXISTS
               : errno == ENOENT ? VIX_E_FILE_NOT_FOUND : VIX_E_FILE_ERROR;
    int ffd = open(flat_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (ffd < 0) {
        int err = errno;
        close(dfd);
        unlink(path);
        return err == EEXIST ? VIX_E_FILE_ALREADY_EXISTS : VIX_E_FILE_ERROR;
    }
    uint64_t sectors = createParams->capacity;
    VixError e = VIX_OK;
    if (ftruncate(ffd, (off_t)(sectors * VIXDISKLIB_SECTOR_SIZE)) != 0)
        e = errno == ENOSPC || errno == EFBIG ? VIX_E_DISK_FULL : VIX_E_FILE_ERROR;
    uint64_t cyl = sectors / (255 * 63);
    unsigned char u[16];
    int rfd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (rfd < 0 || read(rfd, u, sizeof u) != (ssize_t)sizeof u)
        memset(u, 0x5a, sizeof u);
    if (rfd >= 0)
        close(rfd);
    char sizes[128] = "";
    if (lss != 512 || pss != 512)
        snprintf(sizes, sizeof sizes,
                 "ddb.logicalSectorSize = \"%u\"\nddb.physicalSectorSize = \"%u\"\n", lss, pss);
    char text[2048];
    int n = snprintf(text, sizeof text,
                     "# Disk DescriptorFile\n"
                     "version=1\n"
                     "encoding=\"UTF-8\"\n"
                     "CID=fffffffe\n"
                     "parentCID=ffffffff\n"
                     "createType=\"monolithicFlat\"\n"
                     "\n"
                     "# Extent description\n"
                     "RW %llu FLAT \"%s\" 0\n"
                     "\n"
                     "# The Disk Data Base\n"
                     "#DDB\n"
                     "\n"
                     "ddb.adapterType = \"%s\"\n"
                     "ddb.geometry.cylinders = \"%llu\"\n"
                     "ddb.geometry.heads = \"255\"\n"
                     "ddb.geometry.sectors = \"63\"\n"
                     "ddb.uuid = \"%02x %02x %02x %02x %02x %02x %02x %02x-%02x %02x %02x %02x %02x %02x %02x %02x\"\n"
                     "ddb.virtualHWVersion = \"%u\"\n"
                     "%s",
                     (unsigned long long)sectors, flat_name, adapter_name(createParams->adapterType),
                     (unsigned long long)(cyl > 65535 ? 65535 : cyl), u[0], u[1], u[2], u[3], u[4],
                     u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15],
                     createParams->hwVersion ? createParams->hwVersion
                                             : VIXDISKLIB_HWVERSION_NEWEST,
                     sizes);
    if (e == VIX_OK && write(dfd, text, n) != n)
        e = VIX_E_FILE_ERROR;
    if (e == VIX_OK && (fsync(dfd) != 0 || fsync(ffd) != 0))
        e = VIX_E_FILE_ERROR;
    close(dfd);
    close(ffd);
    if (e != VIX_OK) {
        unlink(path);
        unlink(flat_path);
        return e;
    }
    if (progressFunc)
        progressFunc(progressCallbackData, 100);
    emit(log_fn, "VixDiskLib: created %s (%llu sectors)\n", path, (unsigned long long)sectors);
    stat_line("create %s %llu", path, (unsigned long long)sectors * VIXDISKLIB_SECTOR_SIZE);
    return VIX_OK;
}
