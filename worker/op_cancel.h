/*
 * op_cancel.h: the one operation entry beyond the public API
 * (ferry/ferry.h) that the data plane offers its coordinator client, as
 * errors.h and fork.h offer theirs: a cancel that carries the reason the
 * record was cancelled at the coordinator (coord_session.c), so that
 * ferry_op_error says who cancelled and why rather than "cancelled by its
 * owner". Internal, not part of libferry's ABI: the client includes this
 * header and never worker/ferry_int.h (scripts/worker-callgraph.sh checks
 * the client's calls into the data plane against this short list).
 */
#ifndef FERRY_WORKER_OP_CANCEL_H
#define FERRY_WORKER_OP_CANCEL_H

#include <ferry/ferry.h>

/* ferry_op_cancel with `why` (copied) as the operation's message: the
 * coordinator client's, where the record was cancelled at the coordinator.
 * Takes the lock. */
void ferry__op_cancel_why(ferry_op_t *op, const char *why);

#endif /* FERRY_WORKER_OP_CANCEL_H */
