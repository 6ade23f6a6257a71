/* monolithicFlat VMDK descriptors: read the extent line and the disk database (ddb.*), and
 * write them back. Only what the stand-in needs: one FLAT extent, RW or RDONLY. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "standin.h"

#define MAX_DESCRIPTOR (64 * 1024)

void descriptor_free(struct descriptor *d)
{
    free(d->flat_name);
    free(d->header);
    for (int i = 0; i < d->n_meta; i++) {
        free(d->meta_key[i]);
        free(d->meta_val[i]);
    }
    memset(d, 0, sizeof *d);
}

const char *descriptor_get(const struct descriptor *d, const char *key)
{
    for (int i = 0; i < d->n_meta; i++)
        if (strcmp(d->meta_key[i], key) == 0)
            return d->meta_val[i];
    return NULL;
}

int descriptor_set(struct descriptor *d, const char *key, const char *value)
{
    for (int i = 0; i < d->n_meta; i++)
        if (strcmp(d->meta_key[i], key) == 0) {
            char *v = strdup(value);
            if (v == NULL)
                return VIX_E_OUT_OF_MEMORY;
            free(d->meta_val[i]);
            d->meta_val[i] = v;
            return 0;
        }
    if (d->n_meta == MAX_META)
        return VIX_E_DISK_FULL;
    d->meta_key[d->n_meta] = strdup(key);
    d->meta_val[d->n_meta] = strdup(value);
    d->n_meta++;
    return 0;
}

/* `ddb.key = "value"` -> key, value (quotes removed). Returns 0 when the line is one. */
static int parse_ddb(char *line, char **key, char **val)
{
    if (strncmp(line, "ddb.", 4) != 0)
        return -1;
    char *eq = strchr(line, '=');
    if (eq == NULL)
        return -1;
    char *k = line + 4, *ke = eq;
    while (ke > k && isspace((unsigned char)ke[-1]))
        ke--;
    *ke = '\0';
    char *v = eq + 1;
    while (isspace((unsigned char)*v))
        v++;
    char *ve = v + strlen(v);
    while (ve > v && isspace((unsigned char)ve[-1]))
        ve--;
    *ve = '\0';
    if (ve - v >= 2 && v[0] == '"' && ve[-1] == '"') {
        v++;
        ve[-1] = '\0';
    }
    *key = k;
    *val = v;
    return 0;
}

int descriptor_read(const char *path, struct descriptor *d)
{
    memset(d, 0, sizeof *d);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? VIX_E_FILE_NOT_FOUND : VIX_E_FILE_ERROR;
    char *buf = malloc(MAX_DESCRIPTOR + 1);
    if (buf == NULL) {
        close(fd);
        return VIX_E_OUT_OF_MEMORY;
    }
    ssize_t n = read(fd, buf, MAX_DESCRIPTOR);
    close(fd);
    if (n <= 0 || n == MAX_DESCRIPTOR) {
        free(buf);
        return VIX_E_DISK_INVAL;
    }
    buf[n] = '\0';
    if (memchr(buf, '\0', n) != NULL) { /* a binary file: sparse VMDK or raw image */
        free(buf);
        return VIX_E_DISK_NOTSUPPORTED;
    }
    int flat = 0, extents = 0, version = 0, rc = 0;
    size_t header_len = 0;
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        size_t raw_len = strlen(line);
        char *s = line;
        while (isspace((unsigned char)*s))
            s++;
        char *e = s + strlen(s);
        while (e > s && isspace((unsigned char)e[-1]))
            *--e = '\0';
        char *k, *v;
        if (parse_ddb(s, &k, &v) == 0) {
            if ((rc = descriptor_set(d, k, v)) != 0)
                break;
            continue;
        }
        if (d->n_meta == 0)
            header_len = (size_t)(line - buf) + raw_len + 1;
        if (strncmp(s, "version=", 8) == 0)
            version = atoi(s + 8);
        else if (strstr(s, "createType") == s)
            flat = strstr(s, "\"monolithicFlat\"") != NULL || strstr(s, "\"vmfs\"") != NULL;
        else if (strncmp(s, "RW ", 3) == 0 || strncmp(s, "RDONLY ", 7) == 0) {
            unsigned long long sectors, offset = 0;
            char type[16], name[1024];
            int got = sscanf(strchr(s, ' ') + 1, "%llu %15s \"%1023[^\"]\" %llu",
                             &sectors, type, name, &offset);
            if (got < 3 || strcmp(type, "FLAT") != 0) {
                rc = VIX_E_DISK_NOTSUPPORTED;
                break;
            }
            extents++;
            d->sectors = sectors;
            d->extent_offset = offset;
            free(d->flat_name);
            d->flat_name = strdup(name);
        }
    }
    if (rc == 0 && (version != 1 || extents == 0))
        rc = VIX_E_DISK_INVAL;
    if (rc == 0 && (!flat || extents != 1))
        rc = VIX_E_DISK_NOTSUPPORTED;
    if (rc == 0) {
        /* The header is re-read verbatim from the start of the file for rewriting. */
        int fd2 = open(path, O_RDONLY | O_CLOEXEC);
        d->header = calloc(1, header_len + 1);
        if (fd2 < 0 || d->header == NULL || pread(fd2, d->header, header_len, 0) < 0)
            rc = VIX_E_FILE_ERROR;
        if (fd2 >= 0)
            close(fd2);
    }
    free(buf);
    if (rc != 0)
        descriptor_free(d);
    return rc;
}

/* Rewrite the descriptor: the header verbatim, then the disk database. Crash-safe (temporary
 * file, fsync, rename). */
int descriptor_write(const char *path, const struct descriptor *d)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (f == NULL)
        return VIX_E_FILE_ERROR;
    fputs(d->header ? d->header : "", f);
    if (d->header && *d->header && d->header[strlen(d->header) - 1] != '\n')
        fputc('\n', f);
    for (int i = 0; i < d->n_meta; i++)
        fprintf(f, "ddb.%s = \"%s\"\n", d->meta_key[i], d->meta_val[i]);
    int bad = fflush(f) != 0 || fsync(fileno(f)) != 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        unlink(tmp);
        return VIX_E_FILE_ERROR;
    }
    return 0;
}
