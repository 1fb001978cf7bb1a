#define _GNU_SOURCE
#include "novacron_system.h"

#include <fcntl.h>

#include <linux/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

ssize_t novacron_send_with_descriptor(int socket, const void *data, size_t length, int fd) {
    struct iovec iov = {.iov_base = (void *)data, .iov_len = length};
    union {
        char buffer[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof(control));

    struct msghdr message = {0};
    message.msg_iov = &iov;
    message.msg_iovlen = 1;
    message.msg_control = control.buffer;
    message.msg_controllen = sizeof(control.buffer);

    struct cmsghdr *header = CMSG_FIRSTHDR(&message);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(header), &fd, sizeof(int));

    return sendmsg(socket, &message, MSG_NOSIGNAL);
}

#include <signal.h>
#include <spawn.h>

extern char **environ;

int novacron_spawn(const char *path, char *const argv[], int stdin_fd, int stdout_fd, int stderr_fd, pid_t *pid) {
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attributes;
    int result = posix_spawn_file_actions_init(&actions);
    if (result != 0) return result;
    result = posix_spawnattr_init(&attributes);
    if (result != 0) {
        posix_spawn_file_actions_destroy(&actions);
        return result;
    }
    posix_spawn_file_actions_adddup2(&actions, stdin_fd, 0);
    posix_spawn_file_actions_adddup2(&actions, stdout_fd, 1);
    posix_spawn_file_actions_adddup2(&actions, stderr_fd, 2);
    // Nothing else of ours reaches the child: not every descriptor is opened close-on-exec (a QEMU that held
    // its agent's listening socket kept the port open after the agent died, taking connections nobody served).
    posix_spawn_file_actions_addclosefrom_np(&actions, 3);

    sigset_t empty, all;
    sigemptyset(&empty);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attributes, &empty);
    posix_spawnattr_setsigdefault(&attributes, &all);
    posix_spawnattr_setpgroup(&attributes, 0);
    posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);

    result = posix_spawn(pid, path, &actions, &attributes, argv, environ);
    posix_spawnattr_destroy(&attributes);
    posix_spawn_file_actions_destroy(&actions);
    return result;
}

#define NOVACRON_SAME_AS_LINUX(field)                                                                   \
    _Static_assert(offsetof(struct novacron_tcp_info, field) == offsetof(struct tcp_info, tcpi_##field), \
                   "struct novacron_tcp_info." #field " is not where Linux puts it")
NOVACRON_SAME_AS_LINUX(rtt);
NOVACRON_SAME_AS_LINUX(snd_cwnd);
NOVACRON_SAME_AS_LINUX(total_retrans);
NOVACRON_SAME_AS_LINUX(pacing_rate);
NOVACRON_SAME_AS_LINUX(min_rtt);
NOVACRON_SAME_AS_LINUX(delivery_rate);
NOVACRON_SAME_AS_LINUX(busy_time);
NOVACRON_SAME_AS_LINUX(rwnd_limited);
NOVACRON_SAME_AS_LINUX(sndbuf_limited);
_Static_assert(sizeof(struct novacron_tcp_info) <= sizeof(struct tcp_info), "struct novacron_tcp_info is too long");

int novacron_start_writeback(int fd, off_t offset, off_t length) {
    return sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE);
}
