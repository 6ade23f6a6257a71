/* The stand-in's configuration: a line-based key=value file named by VDDK_STANDIN_CONFIG,
 * read at InitEx. Blank lines and lines starting with '#' are ignored; unknown keys are an
 * error, so a typo in a test's set-up does not pass silently. docs/vddk.md lists the keys. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "standin.h"

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

static int parse_long(const char *v, long *out)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || end == v || *end != '\0')
        return -1;
    *out = n;
    return 0;
}

void config_free(struct standin_config *cfg)
{
    for (int i = 0; i < cfg->n_datastores; i++) {
        free(cfg->ds_name[i]);
        free(cfg->ds_dir[i]);
    }
    free(cfg->server);
    free(cfg->user);
    free(cfg->password);
    free(cfg->cookie);
    free(cfg->thumbprint);
    free(cfg->transports);
    free(cfg->stats);
    memset(cfg, 0, sizeof *cfg);
    cfg->fail_read_after = cfg->fail_write_after = cfg->drop_connection_after = -1;
    cfg->hang_read_after = cfg->hang_write_after = -1;
}

int config_load(const char *path, struct standin_config *cfg, char *err, size_t errlen)
{
    config_free(cfg);
    if (path == NULL || *path == '\0')
        return 0;
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errlen, "cannot open stand-in config %s: %s", path, strerror(errno));
        return -1;
    }
    char line[4096];
    int lineno = 0, rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f) != NULL) {
        lineno++;
        char *s = trim(line);
        if (*s == '\0' || *s == '#')
            continue;
        char *eq = strchr(s, '=');
        if (eq == NULL) {
            snprintf(err, errlen, "%s:%d: expected key=value", path, lineno);
            rc = -1;
            break;
        }
        *eq = '\0';
        char *key = trim(s), *val = trim(eq + 1);
        char **str = NULL;
        long *num = NULL;
        if (strncmp(key, "datastore.", 10) == 0 && key[10] != '\0') {
            if (cfg->n_datastores == MAX_DATASTORES) {
                snprintf(err, errlen, "%s:%d: too many datastores", path, lineno);
                rc = -1;
                break;
            }
            cfg->ds_name[cfg->n_datastores] = strdup(key + 10);
            cfg->ds_dir[cfg->n_datastores] = strdup(val);
            cfg->n_datastores++;
            continue;
        }
        if (strcmp(key, "server") == 0) str = &cfg->server;
        else if (strcmp(key, "user") == 0) str = &cfg->user;
        else if (strcmp(key, "password") == 0) str = &cfg->password;
        else if (strcmp(key, "cookie") == 0) str = &cfg->cookie;
        else if (strcmp(key, "thumbprint") == 0) str = &cfg->thumbprint;
        else if (strcmp(key, "transports") == 0) str = &cfg->transports;
        else if (strcmp(key, "stats") == 0) str = &cfg->stats;
        else if (strcmp(key, "fail_read_after") == 0) num = &cfg->fail_read_after;
        else if (strcmp(key, "fail_write_after") == 0) num = &cfg->fail_write_after;
        else if (strcmp(key, "delay_us") == 0) num = &cfg->delay_us;
        else if (strcmp(key, "drop_connection_after") == 0) num = &cfg->drop_connection_after;
        else if (strcmp(key, "transient_read_faults") == 0) num = &cfg->transient_read_faults;
        else if (strcmp(key, "hang_read_after") == 0) num = &cfg->hang_read_after;
        else if (strcmp(key, "hang_write_after") == 0) num = &cfg->hang_write_after;
        else if (strcmp(key, "log_credentials") == 0 || strcmp(key, "panic_on_exit") == 0 ||
                 strcmp(key, "no_allocated_blocks") == 0) {
            long b = 0;
            if (parse_long(val, &b) != 0) {
                snprintf(err, errlen, "%s:%d: %s wants a number", path, lineno, key);
                rc = -1;
            }
            int *flag = key[0] == 'l' ? &cfg->log_credentials
                        : key[0] == 'p' ? &cfg->panic_on_exit : &cfg->no_allocated_blocks;
            *flag = b != 0;
            continue;
        } else {
            snprintf(err, errlen, "%s:%d: unknown key '%s'", path, lineno, key);
            rc = -1;
            break;
        }
        if (str != NULL) {
            free(*str);
            *str = strdup(val);
        } else if (parse_long(val, num) != 0 || *num < 0) {
            snprintf(err, errlen, "%s:%d: %s wants a number >= 0", path, lineno, key);
            rc = -1;
        }
    }
    fclose(f);
    return rc;
}
