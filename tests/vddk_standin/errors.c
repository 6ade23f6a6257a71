/* VixError texts, as VixDiskLib_GetErrorText returns them for the codes the stand-in uses. */
#include "standin.h"

const char *error_text(uint64_t code)
{
    switch (code) {
    case VIX_OK: return "The operation was successful";
    case VIX_E_FAIL: return "Unknown error";
    case VIX_E_OUT_OF_MEMORY: return "Memory allocation failed. Out of memory.";
    case VIX_E_INVALID_ARG: return "One of the parameters was invalid";
    case VIX_E_FILE_NOT_FOUND: return "The file was not found";
    case VIX_E_OBJECT_IS_BUSY: return "This function cannot be performed because the handle is executing another function";
    case VIX_E_NOT_SUPPORTED: return "The operation is not supported";
    case VIX_E_FILE_ERROR: return "A file access error occurred on the host or guest operating system";
    case VIX_E_DISK_FULL: return "An error occurred while writing a file; the disk is full";
    case VIX_E_FILE_READ_ONLY: return "The file is write-protected";
    case VIX_E_FILE_ALREADY_EXISTS: return "The file already exists";
    case VIX_E_BUFFER_TOOSMALL: return "The buffer is too small";
    case VIX_E_INVALID_HANDLE: return "The handle is not a valid VIX object";
    case VIX_E_HOST_USER_PERMISSIONS: return "Insufficient permissions in the host operating system";
    case VIX_E_HOST_TCP_CONN_LOST: return "The network connection to the host was lost";
    case VIX_E_DISK_INVAL: return "An invalid disk was specified";
    case VIX_E_DISK_NOINIT: return "The disk library has not been initialized";
    case VIX_E_DISK_OUTOFRANGE: return "One of the parameters supplied is out of range";
    case VIX_E_DISK_NOTSUPPORTED: return "The called function is not supported for this disk";
    case VIX_E_DISK_KEY_NOTFOUND: return "The specified key is not found in the disk database";
    case VIX_E_DISK_INVALID_CONNECTION: return "The connection handle is not valid";
    case VIX_E_CANNOT_CONNECT_TO_HOST: return "Cannot connect to host";
    case VIX_E_NET_HTTP_SSL_SECURITY: return "SSL certificate verification failed: the server's thumbprint does not match";
    default: return "Unknown error";
    }
}
