#ifndef NOVACRON_SYSTEM_H
#define NOVACRON_SYSTEM_H

#include <stddef.h>
#include <sys/types.h>

/// Sends `length` bytes of `data` on the unix-domain `socket` with `fd` attached as SCM_RIGHTS
/// ancillary data (the CMSG_* macros are not callable from Swift). Returns what sendmsg(2) returns.
ssize_t novacron_send_with_descriptor(int socket, const void *data, size_t length, int fd);



/// Starts `path` with `argv` (NULL-terminated) and the current environment, its standard input,
/// output and error on the given descriptors, with an empty signal mask and default signal
/// dispositions (a caller's blocked or ignored signals are not inherited), in a new process group.
/// Stores the child's pid and returns 0, or returns an errno value.
int novacron_spawn(const char *path, char *const argv[], int stdin_fd, int stdout_fd, int stderr_fd, pid_t *pid);
#endif
