/*
 * exec.c: the etcd work queue (exec.h): a FIFO of jobs and a fixed set of
 * worker threads that take them in turn.
 *
 * Invariants: the urgent jobs are the head of the list, urgent_tail the
 * last of them (NULL: none); n_queued counts the jobs on the list that are
 * neither urgent nor submitted with COORD_EXEC_MUST (only those count
 * against max_queued), n_urgent the urgent ones (against max_queued of
 * their own, at least n_workers); n_running the jobs a worker has taken and not finished;
 * urgent_streak the urgent jobs taken in a row while another waited,
 * never more than one, or n_workers while the urgent lane is over half
 * full (exec_take). Once `stopping` is set nothing is
 * added, and the workers leave when the list is empty.
 *
 * Threads: `lock` guards everything below it in struct coord_exec; `cond`
 * wakes workers when a job arrives or the queue stops.
 */
#include "exec.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

typedef struct exec_job {
    coord_job_fn fn;
    void *arg;
    bool must;   /* does not count against max_queued */
    bool urgent; /* ahead of the others; counts in n_urgent */
    struct exec_job *next;
} exec_job_t;

struct coord_exec {
    int n_workers;
    int max_queued;
    pthread_t *workers;
    int n_started;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    exec_job_t *head, *tail;
    exec_job_t *urgent_tail; /* the last urgent job on the list, or NULL */
    int n_queued;            /* jobs on the list neither urgent nor MUST */
    int n_urgent;            /* urgent jobs on the list */
    int n_waiting;           /* all jobs on the list */
    int n_running;
    int urgent_streak; /* urgent jobs taken in a row while another waited */
    bool stopping;
    bool stopped; /* workers joined */
};

/* The queue's room for a job of the lane `urgent`: max_queued, and for the
 * urgent lane (renewals) at least n_workers: with max_queued 0, meant to
 * shed writes, every renewal was refused while the workers were busy, and
 * leases expired under the load it was to shed (audit-s33-operator L2). */
static int lane_room(const coord_exec_t *exec, bool urgent)
{
    return urgent && exec->max_queued < exec->n_workers ? exec->n_workers : exec->max_queued;
}

/* The next job a worker takes: the head (the oldest urgent job, else the
 * oldest other), but while both kinds wait, urgent and other in turn: an
 * urgent job taken while another waited (urgent_streak) is followed by the
 * oldest other; while the urgent lane is over half full, n_workers urgent
 * ones are. Writes so keep half the takes however many renewals keep
 * coming (a client renewing its own lease from many connections, faster
 * than etcd answers, kept every other job waiting until its deadline:
 * audit-s33 M1; n_workers renewals in a row always held the writes to one
 * take in n_workers + 1: review-s33b M2), and renewals that pile up under
 * a write flood still get n_workers of every n_workers + 1 takes, as their
 * refusal lets leases expire (review-s33c M1). */
static exec_job_t *exec_take(coord_exec_t *exec)
{
    exec_job_t **at = &exec->head;
    exec_job_t *other = exec->urgent_tail != NULL ? exec->urgent_tail->next : exec->head;
    exec_job_t *job;

    if (other == NULL || !exec->head->urgent) {
        exec->urgent_streak = 0; /* none waits behind the urgent ones, or none is urgent */
    } else if (exec->urgent_streak <
               (2 * exec->n_urgent > lane_room(exec, true) ? exec->n_workers : 1)) {
        exec->urgent_streak++;
    } else {
        exec->urgent_streak = 0;
        at = &exec->urgent_tail->next;
    }
    job = *at;
    *at = job->next;
    if (exec->tail == job) {
        exec->tail = at == &exec->head ? NULL : exec->urgent_tail;
    }
    if (exec->urgent_tail == job) {
        exec->urgent_tail = NULL;
    }
    exec->n_waiting--;
    if (job->urgent) {
        exec->n_urgent--;
    } else if (!job->must) {
        exec->n_queued--;
    }
    return job;
}

static void *exec_worker(void *arg)
{
    coord_exec_t *exec = arg;

    pthread_mutex_lock(&exec->lock);
    for (;;) {
        while (exec->head == NULL && !exec->stopping) {
            pthread_cond_wait(&exec->cond, &exec->lock);
        }
        if (exec->head == NULL || exec->stopping) {
            break; /* stop drops what waits: coord_exec_stop calls it */
        }
        exec_job_t *job = exec_take(exec);
        exec->n_running++;
        pthread_mutex_unlock(&exec->lock);
        job->fn(job->arg, true);
        free(job);
        pthread_mutex_lock(&exec->lock);
        exec->n_running--;
    }
    pthread_mutex_unlock(&exec->lock);
    return NULL;
}

ferry_status_t coord_exec_create(const coord_exec_params_t *params, coord_exec_t **exec_p)
{
    coord_exec_t *exec;
    int rc;

    if (params == NULL || params->n_workers < 1 || params->max_queued < 0) {
        ferry_error("exec: needs at least one worker and a queue bound >= 0");
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    exec = calloc(1, sizeof(*exec));
    if (exec == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    exec->n_workers = params->n_workers;
    exec->max_queued = params->max_queued;
    exec->workers = calloc((size_t)params->n_workers, sizeof(pthread_t));
    if (exec->workers == NULL) {
        goto err_free;
    }
    if (pthread_mutex_init(&exec->lock, NULL) != 0) {
        goto err_free;
    }
    if (pthread_cond_init(&exec->cond, NULL) != 0) {
        goto err_lock;
    }
    for (; exec->n_started < exec->n_workers; exec->n_started++) {
        rc = pthread_create(&exec->workers[exec->n_started], NULL, exec_worker, exec);
        if (rc != 0) {
            ferry_error("exec: cannot start etcd worker %d of %d: %s", exec->n_started + 1,
                        exec->n_workers, strerror(rc));
            coord_exec_destroy(exec); /* joins the ones started */
            return FERRY_ERR_IO;
        }
    }
    *exec_p = exec;
    return FERRY_OK;

err_lock:
    pthread_mutex_destroy(&exec->lock);
err_free:
    free(exec->workers);
    free(exec);
    return FERRY_ERR_NO_MEMORY;
}

ferry_status_t coord_exec_submit(coord_exec_t *exec, coord_job_fn fn, void *arg, unsigned flags)
{
    exec_job_t *job = malloc(sizeof(*job));
    ferry_status_t status = FERRY_OK;
    int room;

    if (job == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    *job = (exec_job_t){.fn = fn,
                        .arg = arg,
                        .must = (flags & COORD_EXEC_MUST) != 0,
                        .urgent = (flags & COORD_EXEC_URGENT) != 0};
    pthread_mutex_lock(&exec->lock);
    /* Idle workers will take as many jobs at once; beyond them and the
     * lane's room, the queue (of the job's kind) is full. */
    room = lane_room(exec, job->urgent) + (exec->n_workers - exec->n_running);
    if (exec->stopping) {
        status = FERRY_ERR_UNAVAILABLE;
    } else if (job->urgent ? exec->n_urgent >= room : !job->must && exec->n_queued >= room) {
        status = FERRY_ERR_RESOURCE_EXHAUSTED;
    } else {
        exec_job_t **at = job->urgent
                              ? (exec->urgent_tail != NULL ? &exec->urgent_tail->next : &exec->head)
                              : (exec->tail != NULL ? &exec->tail->next : &exec->head);
        job->next = *at;
        *at = job;
        if (job->next == NULL) {
            exec->tail = job;
        }
        if (job->urgent) {
            exec->urgent_tail = job;
        }
        exec->n_waiting++;
        exec->n_urgent += job->urgent;
        exec->n_queued += !job->urgent && !job->must;
        pthread_cond_signal(&exec->cond);
        job = NULL;
    }
    pthread_mutex_unlock(&exec->lock);
    free(job);
    return status;
}

void coord_exec_load(coord_exec_t *exec, int *running_p, int *queued_p)
{
    pthread_mutex_lock(&exec->lock);
    *running_p = exec->n_running;
    *queued_p = exec->n_waiting;
    pthread_mutex_unlock(&exec->lock);
}

int coord_exec_capacity(const coord_exec_t *exec, unsigned flags)
{
    return exec->n_workers + lane_room(exec, (flags & COORD_EXEC_URGENT) != 0);
}

void coord_exec_stop(coord_exec_t *exec)
{
    exec_job_t *dropped;

    pthread_mutex_lock(&exec->lock);
    if (exec->stopped) {
        pthread_mutex_unlock(&exec->lock);
        return;
    }
    exec->stopping = true;
    dropped = exec->head;
    exec->head = exec->tail = exec->urgent_tail = NULL;
    exec->n_waiting = exec->n_queued = exec->n_urgent = 0;
    pthread_cond_broadcast(&exec->cond);
    pthread_mutex_unlock(&exec->lock);

    while (dropped != NULL) {
        exec_job_t *next = dropped->next;
        dropped->fn(dropped->arg, false);
        free(dropped);
        dropped = next;
    }
    for (int i = 0; i < exec->n_started; i++) {
        pthread_join(exec->workers[i], NULL);
    }
    pthread_mutex_lock(&exec->lock);
    exec->stopped = true;
    pthread_mutex_unlock(&exec->lock);
}

void coord_exec_destroy(coord_exec_t *exec)
{
    if (exec == NULL) {
        return;
    }
    coord_exec_stop(exec);
    pthread_cond_destroy(&exec->cond);
    pthread_mutex_destroy(&exec->lock);
    free(exec->workers);
    free(exec);
}
