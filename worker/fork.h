/*
 * fork.h: libferry in a process forked from one where it had started.
 *
 * UCX's state (its memory hooks' locks, its event file descriptors) and
 * gRPC's (its pollers' shared epoll set, its timer threads) are copied by
 * fork() as they were, held locks included, while the threads that held
 * them stay in the parent. A child that starts either again hangs (UCX's
 * rcache on a hook lock the parent's progress thread held; gRPC's first
 * call in epoll_wait on the parent's set, with no timer to end it), and its
 * gRPC poller takes the parent's socket events: the parent's KeepAlive
 * missed its answer and its session lease, with every record on it,
 * expired. So a process forked after libferry started refuses to start it:
 * FERRY_ERR_MISUSE, saying to exec or to spawn instead. A process forked
 * before (a pre-fork server, a multiprocessing pool made first) is not
 * affected.
 */
#ifndef FERRY_WORKER_FORK_H
#define FERRY_WORKER_FORK_H

#include <ferry/status.h>

/* Before starting UCX or gRPC for `what` ("connector", "coordinator
 * client"): FERRY_ERR_MISUSE (ferry__fail's message naming `what`) in a
 * process forked from one where libferry had started; otherwise marks this
 * process as started and returns FERRY_OK. */
ferry_status_t ferry__fork_start(const char *what);

#endif
