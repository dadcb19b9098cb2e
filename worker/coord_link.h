/*
 * coord_link.h: the seam between libferry's operations (op.c) and the
 * coordinator client (coord_client.c). An operation bound to a coordinator
 * holds a link; ferry_op_destroy unlinks it first, which reports the
 * operation's end to the coordinator (Cancel for an unfinished passive
 * operation; Complete or Cancel for an active one) and stops its keep-alive.
 */
#ifndef FERRY_WORKER_COORD_LINK_H
#define FERRY_WORKER_COORD_LINK_H

#include "worker/ferry_int.h"

typedef struct ferry__coord_link ferry__coord_link_t;

/* Called by ferry_op_destroy before anything else, without locks held. */
void ferry__coord_unlink(ferry__coord_link_t *link);

/* The link of an operation (NULL when it has none); set once. */
ferry__coord_link_t *ferry__op_coord_link(const ferry_op_t *op);
void ferry__op_set_coord_link(ferry_op_t *op, ferry__coord_link_t *link);

/* The owning connector's name, for Register's owner field. */
const char *ferry__op_connector_name(const ferry_op_t *op);

#endif /* FERRY_WORKER_COORD_LINK_H */
