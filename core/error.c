/*
 * error.c - error names, the library version, role names.
 * Small lookup tables shared by every layer of libaltgrad.
 */
#include <string.h>

#include "altgrad/altgrad.h"

AG_EXTERN const char *ag_strerror(int err)
{
    switch (err) {
    case AG_OK: return "success";
    case AG_EINVAL: return "invalid argument";
    case AG_ENOMEM: return "out of memory";
    case AG_EFORMAT: return "unknown or impossible format";
    case AG_EEXIST: return "a different format is registered under that name";
    case AG_ERANGE: return "value out of range";
    case AG_ENOSPC: return "table full";
    case AG_EPROTO: return "malformed message";
    case AG_EVERSION: return "unsupported protocol version";
    case AG_ETOOBIG: return "message, string or array too large";
    case AG_EAGAIN: return "send queue full, message dropped";
    case AG_ETIMEDOUT: return "timed out";
    case AG_ECLOSED: return "closed";
    case AG_ENOTFOUND: return "not found";
    case AG_ETRANSPORT: return "transport error";
    case AG_ESTORE: return "database error";
    case AG_EIO: return "I/O error";
    case AG_EREMOTE: return "the daemon reported an error";
    case AG_ELOST: return "messages were lost on the way to the daemon";
    default: return "unknown error";
    }
}

AG_EXTERN const char *ag_version(void)
{
    return AG_VERSION_STRING;
}

static const char *const role_names[] = {"weight", "gradient", "activation", "update"};

AG_EXTERN const char *ag_role_name(int role)
{
    if (role < 0 || role >= (int)(sizeof role_names / sizeof role_names[0]))
        return NULL;
    return role_names[role];
}

AG_EXTERN int ag_role_parse(const char *s)
{
    if (s == NULL)
        return -1;
    for (int i = 0; i < (int)(sizeof role_names / sizeof role_names[0]); i++)
        if (strcmp(s, role_names[i]) == 0)
            return i;
    return -1;
}
