#ifndef NOVACRON_SYSTEM_H
#define NOVACRON_SYSTEM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/// The leading part of Linux's `struct tcp_info` (linux/tcp.h, kernels 4.10 and later), laid out
/// identically (novacron_system.c checks the offsets at compile time), to read with
/// getsockopt(TCP_INFO). glibc's `struct tcp_info` ends before the delivery rate and the busy,
/// receive-window-limited and send-buffer-limited times. Times in microseconds, rates in bytes/s.
struct novacron_tcp_info {
    uint8_t state, ca_state, retransmits, probes, backoff, options, wscale, flags;
    uint32_t rto, ato, snd_mss, rcv_mss;
    uint32_t unacked, sacked, lost, retrans, fackets;
    uint32_t last_data_sent, last_ack_sent, last_data_recv, last_ack_recv;
    uint32_t pmtu, rcv_ssthresh, rtt, rttvar, snd_ssthresh, snd_cwnd, advmss, reordering;
    uint32_t rcv_rtt, rcv_space;
    uint32_t total_retrans;
    uint64_t pacing_rate, max_pacing_rate, bytes_acked, bytes_received;
    uint32_t segs_out, segs_in;
    uint32_t notsent_bytes, min_rtt, data_segs_in, data_segs_out;
    uint64_t delivery_rate;
    uint64_t busy_time, rwnd_limited, sndbuf_limited;
};

/// Sends `length` bytes of `data` on the unix-domain `socket` with `fd` attached as SCM_RIGHTS
/// ancillary data (the CMSG_* macros are not callable from Swift). Returns what sendmsg(2) returns.
ssize_t novacron_send_with_descriptor(int socket, const void *data, size_t length, int fd);



/// Starts `path` with `argv` (NULL-terminated) and the current environment, its standard input,
/// output and error on the given descriptors, with an empty signal mask and default signal
/// dispositions (a caller's blocked or ignored signals are not inherited), in a new process group. No other
/// descriptor of the caller's is inherited, close-on-exec or not.
/// Stores the child's pid and returns 0, or returns an errno value.
int novacron_spawn(const char *path, char *const argv[], int stdin_fd, int stdout_fd, int stderr_fd, pid_t *pid);

/// Starts writeback of the dirty pages of `fd` in [offset, offset + length) without waiting for it:
/// sync_file_range(2) with SYNC_FILE_RANGE_WRITE (glibc declares it only under _GNU_SOURCE, which
/// Swift's Glibc module does not set). Returns 0 or -1 with errno set.
int novacron_start_writeback(int fd, off_t offset, off_t length);
#endif
