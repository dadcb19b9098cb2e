/*
 * test_exec.c: the etcd work queue (coordinator/exec.h). Jobs that block
 * (as a call to a frozen etcd does) hold the workers, never the submitter;
 * at most n_workers run at once; beyond max_queued waiting jobs a submit is
 * refused with RESOURCE_EXHAUSTED unless it is COORD_EXEC_MUST; urgent jobs
 * (lease renewals) go ahead of the others and are not refused by a queue
 * full of them, but never starve them; jobs run in order; stopping calls
 * every waiting job once with run = false.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>

#include "exec.h"
#include "testproc.h"

/* A gate that blocking jobs wait on, and what the jobs saw. */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool open;
    int running, max_running, ran, dropped;
    int order[64];
    int n_order;
} gate_t;

typedef struct {
    gate_t *gate;
    int index;
} job_arg_t;

static void gate_init(gate_t *g)
{
    *g = (gate_t){.open = false};
    pthread_mutex_init(&g->lock, NULL);
    pthread_cond_init(&g->cond, NULL);
}

static void gate_open(gate_t *g)
{
    pthread_mutex_lock(&g->lock);
    g->open = true;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->lock);
}

static void blocking_job(void *arg, bool run)
{
    job_arg_t *a = arg;
    gate_t *g = a->gate;

    pthread_mutex_lock(&g->lock);
    if (!run) {
        g->dropped++;
        pthread_mutex_unlock(&g->lock);
        return;
    }
    g->running++;
    if (g->running > g->max_running) {
        g->max_running = g->running;
    }
    while (!g->open) {
        pthread_cond_wait(&g->cond, &g->lock);
    }
    g->running--;
    g->ran++;
    if (g->n_order < 64) {
        g->order[g->n_order++] = a->index;
    }
    pthread_mutex_unlock(&g->lock);
}

typedef struct {
    gate_t *gate;
    int want_running;
    int want_ran;
} gate_wait_t;

static bool gate_reached(void *arg)
{
    gate_wait_t *w = arg;
    pthread_mutex_lock(&w->gate->lock);
    bool ok = w->gate->running >= w->want_running && w->gate->ran >= w->want_ran;
    pthread_mutex_unlock(&w->gate->lock);
    return ok;
}

static void test_bounded_and_refused(void **state)
{
    coord_exec_params_t params = {.n_workers = 2, .max_queued = 3};
    coord_exec_t *exec = NULL;
    gate_t g;
    job_arg_t args[10];
    (void)state;

    gate_init(&g);
    assert_int_equal(coord_exec_create(&params, &exec), FERRY_OK);
    for (int i = 0; i < 10; i++) {
        args[i] = (job_arg_t){.gate = &g, .index = i};
    }
    /* 2 run, 3 wait: 5 accepted however fast the workers take them. */
    for (int i = 0; i < 5; i++) {
        assert_int_equal(coord_exec_submit(exec, blocking_job, &args[i], 0), FERRY_OK);
    }
    gate_wait_t w = {.gate = &g, .want_running = 2};
    assert_true(test_wait_for(gate_reached, &w, 10000));
    assert_int_equal(coord_exec_submit(exec, blocking_job, &args[5], 0),
                     FERRY_ERR_RESOURCE_EXHAUSTED);
    /* Internal work that must not be lost is queued beyond the bound. */
    assert_int_equal(coord_exec_submit(exec, blocking_job, &args[6], COORD_EXEC_MUST), FERRY_OK);
    int running = -1, queued = -1;
    coord_exec_load(exec, &running, &queued);
    assert_int_equal(running, 2);
    assert_int_equal(queued, 4);

    gate_open(&g);
    w = (gate_wait_t){.gate = &g, .want_ran = 6};
    assert_true(test_wait_for(gate_reached, &w, 10000));
    assert_int_equal(g.max_running, 2);
    /* Room again. */
    assert_int_equal(coord_exec_submit(exec, blocking_job, &args[7], 0), FERRY_OK);
    w.want_ran = 7;
    assert_true(test_wait_for(gate_reached, &w, 10000));
    coord_exec_destroy(exec);
    assert_int_equal(g.dropped, 0);
}

/* With no queue (--etcd-queue 0, to shed writes) and every worker busy, an
 * ordinary job is refused but renewals keep a lane of n_workers
 * (audit-s33-operator L2: every KeepAlive was refused, and leases expired
 * under the load the setting was to shed); the lane's bound holds. */
static void test_no_queue_keeps_a_lane_for_renewals(void **state)
{
    coord_exec_params_t params = {.n_workers = 2, .max_queued = 0};
    coord_exec_t *exec = NULL;
    gate_t g;
    job_arg_t args[6];
    (void)state;

    gate_init(&g);
    assert_int_equal(coord_exec_create(&params, &exec), FERRY_OK);
    for (int i = 0; i < 6; i++) {
        args[i] = (job_arg_t){.gate = &g, .index = i};
    }
    for (int i = 0; i < 2; i++) {
        assert_int_equal(coord_exec_submit(exec, blocking_job, &args[i], 0), FERRY_OK);
    }
    gate_wait_t w = {.gate = &g, .want_running = 2};
    assert_true(test_wait_for(gate_reached, &w, 10000));
    assert_int_equal(coord_exec_submit(exec, blocking_job, &args[2], 0),
                     FERRY_ERR_RESOURCE_EXHAUSTED);
    for (int i = 3; i < 5; i++) {
        assert_int_equal(coord_exec_submit(exec, blocking_job, &args[i], COORD_EXEC_URGENT),
                         FERRY_OK);
    }
    assert_int_equal(coord_exec_submit(exec, blocking_job, &args[5], COORD_EXEC_URGENT),
                     FERRY_ERR_RESOURCE_EXHAUSTED);
    gate_open(&g);
    w = (gate_wait_t){.gate = &g, .want_ran = 4};
    assert_true(test_wait_for(gate_reached, &w, 10000));
    coord_exec_destroy(exec);
    assert_int_equal(g.dropped, 0);
}

static void test_stop_drops_waiting_jobs_once(void **state)
{
    coord_exec_params_t params = {.n_workers = 1, .max_queued = 8};
    coord_exec_t *exec = NULL;
    gate_t g;
    job_arg_t args[4];
    (void)state;

    gate_init(&g);
    assert_int_equal(coord_exec_create(&params, &exec), FERRY_OK);
    for (int i = 0; i < 4; i++) {
        args[i] = (job_arg_t){.gate = &g, .index = i};
        assert_int_equal(coord_exec_submit(exec, blocking_job, &args[i], 0), FERRY_OK);
    }
    gate_wait_t w = {.gate = &g, .want_running = 1};
    assert_true(test_wait_for(gate_reached, &w, 10000));
    /* The running job ends once the gate opens; stop joins it. */
    gate_open(&g);
    coord_exec_stop(exec);
    assert_int_equal(g.ran + g.dropped, 4);
    assert_true(g.ran >= 1);
    assert_int_equal(coord_exec_submit(exec, blocking_job, &args[0], 0), FERRY_ERR_UNAVAILABLE);
    coord_exec_stop(exec); /* idempotent */
    coord_exec_destroy(exec);
    coord_exec_destroy(NULL);
}

static void test_jobs_run_in_order(void **state)
{
    coord_exec_params_t params = {.n_workers = 1, .max_queued = 8};
    coord_exec_t *exec = NULL;
    gate_t g;
    job_arg_t args[6];
    (void)state;

    gate_init(&g);
    assert_int_equal(coord_exec_create(&params, &exec), FERRY_OK);
    for (int i = 0; i < 6; i++) {
        args[i] = (job_arg_t){.gate = &g, .index = i};
        assert_int_equal(
            coord_exec_submit(exec, blocking_job, &args[i], i == 3 ? COORD_EXEC_MUST : 0),
            FERRY_OK);
    }
    gate_open(&g);
    gate_wait_t w = {.gate = &g, .want_ran = 6};
    assert_true(test_wait_for(gate_reached, &w, 10000));
    for (int i = 0; i < 6; i++) {
        assert_int_equal(g.order[i], i);
    }
    coord_exec_destroy(exec);
}

/* A queue full of ordinary jobs (Registers) neither refuses nor delays an
 * urgent one (a KeepAlive): it is accepted, and runs before the ordinary
 * jobs that wait (but one after every n_workers urgent ones, here 1), in
 * order among urgent ones; urgent jobs have a bound of their own. Before,
 * a KeepAlive was refused here until the burst was over. */
static void test_urgent_jobs_go_first_with_a_bound_of_their_own(void **state)
{
    coord_exec_params_t params = {.n_workers = 1, .max_queued = 2};
    coord_exec_t *exec = NULL;
    gate_t g;
    job_arg_t args[8];
    (void)state;

    gate_init(&g);
    assert_int_equal(coord_exec_create(&params, &exec), FERRY_OK);
    for (int i = 0; i < 8; i++) {
        args[i] = (job_arg_t){.gate = &g, .index = i};
    }
    /* 0 runs (held at the gate), 1 and 2 wait: the ordinary queue is full. */
    assert_int_equal(coord_exec_submit(exec, blocking_job, &args[0], 0), FERRY_OK);
    gate_wait_t w = {.gate = &g, .want_running = 1};
    assert_true(test_wait_for(gate_reached, &w, 10000));
    assert_int_equal(coord_exec_submit(exec, blocking_job, &args[1], 0), FERRY_OK);
    assert_int_equal(coord_exec_submit(exec, blocking_job, &args[2], 0), FERRY_OK);
    assert_int_equal(coord_exec_submit(exec, blocking_job, &args[3], 0),
                     FERRY_ERR_RESOURCE_EXHAUSTED);
    /* Urgent: accepted beyond the full ordinary queue, up to its own bound. */
    assert_int_equal(coord_exec_submit(exec, blocking_job, &args[4], COORD_EXEC_URGENT), FERRY_OK);
    assert_int_equal(coord_exec_submit(exec, blocking_job, &args[5], COORD_EXEC_URGENT), FERRY_OK);
    assert_int_equal(coord_exec_submit(exec, blocking_job, &args[6], COORD_EXEC_URGENT),
                     FERRY_ERR_RESOURCE_EXHAUSTED);
    /* An ordinary internal job goes to the tail, behind the urgent ones. */
    assert_int_equal(coord_exec_submit(exec, blocking_job, &args[7], COORD_EXEC_MUST), FERRY_OK);

    gate_open(&g);
    w = (gate_wait_t){.gate = &g, .want_ran = 6};
    assert_true(test_wait_for(gate_reached, &w, 10000));
    int want[] = {0, 4, 1, 5, 2, 7};
    for (int i = 0; i < 6; i++) {
        assert_int_equal(g.order[i], want[i]);
    }
    /* Room again for both kinds. */
    assert_int_equal(coord_exec_submit(exec, blocking_job, &args[3], 0), FERRY_OK);
    assert_int_equal(coord_exec_submit(exec, blocking_job, &args[6], COORD_EXEC_URGENT), FERRY_OK);
    w.want_ran = 8;
    assert_true(test_wait_for(gate_reached, &w, 10000));
    coord_exec_destroy(exec);
    assert_int_equal(g.dropped, 0);
}

/* What a stream of urgent jobs leaves an ordinary one: how many urgent
 * jobs started before it did. */
typedef struct {
    coord_exec_t *exec;
    pthread_mutex_t lock;
    int urgent_started;
    int ordinary_left; /* ordinary jobs still to start; the last sets urgent_before */
    int urgent_before; /* urgent_started when the last ordinary job started; -1: not yet */
    int submitted;     /* urgent jobs the feeder queued */
} stream_t;

static void urgent_job(void *arg, bool run)
{
    stream_t *s = arg;

    pthread_mutex_lock(&s->lock);
    s->urgent_started += run;
    pthread_mutex_unlock(&s->lock);
}

static void ordinary_job(void *arg, bool run)
{
    stream_t *s = arg;

    pthread_mutex_lock(&s->lock);
    if (run && --s->ordinary_left == 0) {
        s->urgent_before = s->urgent_started;
    }
    pthread_mutex_unlock(&s->lock);
}

#define STREAM_MAX 20000

/* Keeps the urgent lane from emptying (a client renewing its own lease from
 * many connections) until the ordinary job ran, or STREAM_MAX were queued. */
static void *urgent_feeder(void *arg)
{
    stream_t *s = arg;

    for (;;) {
        pthread_mutex_lock(&s->lock);
        bool done = s->urgent_before >= 0 || s->submitted >= STREAM_MAX;
        pthread_mutex_unlock(&s->lock);
        if (done) {
            return NULL;
        }
        if (coord_exec_submit(s->exec, urgent_job, s, COORD_EXEC_URGENT) == FERRY_OK) {
            pthread_mutex_lock(&s->lock);
            s->submitted++;
            pthread_mutex_unlock(&s->lock);
        } else {
            sched_yield(); /* the lane is full: the workers take some */
        }
    }
}

static bool ordinary_ran(void *arg)
{
    stream_t *s = arg;

    pthread_mutex_lock(&s->lock);
    bool ran = s->urgent_before >= 0;
    pthread_mutex_unlock(&s->lock);
    return ran;
}

/* Urgent jobs go first for at most n_workers in a row while an ordinary job
 * waits: an ordinary job (a Register, a claim-end) submitted before a
 * stream of urgent ones that never lets their lane empty still runs, after
 * at most n_workers of them, plus as many again that other workers took
 * while it was being taken (audit-s33 M1). Before, it waited for the lane
 * to empty: with the stream, never. */
static void test_urgent_jobs_do_not_starve_the_others(void **state)
{
    enum { WORKERS = 2 };
    coord_exec_params_t params = {.n_workers = WORKERS, .max_queued = 64};
    stream_t s = {.urgent_before = -1, .ordinary_left = 1};
    gate_t g;
    job_arg_t held[WORKERS];
    pthread_t feeder;
    (void)state;

    gate_init(&g);
    pthread_mutex_init(&s.lock, NULL);
    assert_int_equal(coord_exec_create(&params, &s.exec), FERRY_OK);
    /* Every worker held, so that the ordinary job and a full lane of urgent
     * ones wait together when the workers come back. */
    for (int i = 0; i < WORKERS; i++) {
        held[i] = (job_arg_t){.gate = &g, .index = i};
        assert_int_equal(coord_exec_submit(s.exec, blocking_job, &held[i], 0), FERRY_OK);
    }
    gate_wait_t w = {.gate = &g, .want_running = WORKERS};
    assert_true(test_wait_for(gate_reached, &w, 10000));
    assert_int_equal(coord_exec_submit(s.exec, ordinary_job, &s, 0), FERRY_OK);
    for (int i = 0; i < params.max_queued; i++) {
        assert_int_equal(coord_exec_submit(s.exec, urgent_job, &s, COORD_EXEC_URGENT), FERRY_OK);
        s.submitted++;
    }
    assert_int_equal(pthread_create(&feeder, NULL, urgent_feeder, &s), 0);
    gate_open(&g);
    assert_true(test_wait_for(ordinary_ran, &s, 30000));
    pthread_join(feeder, NULL);
    assert_in_range(s.urgent_before, 0, 2 * WORKERS);
    coord_exec_destroy(s.exec);
    pthread_mutex_destroy(&s.lock);
}

/* Runs TURN_ORDINARY ordinary jobs beside `urgent` urgent ones, all waiting as
 * the TURN_WORKERS workers come back, with a queue of max_queued: how many
 * urgent jobs had started when the last ordinary one did. */
enum { TURN_WORKERS = 4, TURN_ORDINARY = 16 };

static int urgent_before_the_last(int urgent, int max_queued)
{
    coord_exec_params_t params = {.n_workers = TURN_WORKERS, .max_queued = max_queued};
    stream_t s = {.urgent_before = -1, .ordinary_left = TURN_ORDINARY};
    gate_t g;
    job_arg_t held[TURN_WORKERS];

    gate_init(&g);
    pthread_mutex_init(&s.lock, NULL);
    assert_int_equal(coord_exec_create(&params, &s.exec), FERRY_OK);
    for (int i = 0; i < TURN_WORKERS; i++) {
        held[i] = (job_arg_t){.gate = &g, .index = i};
        assert_int_equal(coord_exec_submit(s.exec, blocking_job, &held[i], 0), FERRY_OK);
    }
    gate_wait_t w = {.gate = &g, .want_running = TURN_WORKERS};
    assert_true(test_wait_for(gate_reached, &w, 10000));
    for (int i = 0; i < TURN_ORDINARY; i++) {
        assert_int_equal(coord_exec_submit(s.exec, ordinary_job, &s, 0), FERRY_OK);
    }
    for (int i = 0; i < urgent; i++) {
        assert_int_equal(coord_exec_submit(s.exec, urgent_job, &s, COORD_EXEC_URGENT), FERRY_OK);
    }
    gate_open(&g);
    assert_true(test_wait_for(ordinary_ran, &s, 30000));
    coord_exec_destroy(s.exec);
    pthread_mutex_destroy(&s.lock);
    return s.urgent_before;
}

/* While both kinds wait, urgent and ordinary jobs take turns: the last of
 * 16 ordinary jobs (writes) runs with about as many urgent ones (renewals)
 * started, one per ordinary job, where n_workers in a row (4) held the
 * writes to one take in n_workers + 1 under a client renewing from many
 * connections (review-s33b M2): all 64 urgent jobs ran first. While the
 * urgent lane is over half full, n_workers go per ordinary one, so that
 * renewals piling up under a write flood are not refused and leases do not
 * expire (review-s33c M1): strict turns gave them half. */
static void test_urgent_and_ordinary_jobs_take_turns(void **state)
{
    (void)state;
    /* 64 urgent in a lane of 256: under half full, in turn. */
    assert_in_range(urgent_before_the_last(64, 256), 0, TURN_ORDINARY + 2 * TURN_WORKERS);
    /* 64 in a lane of 64: n_workers each until it is half full (32 go with
     * 8 ordinary ones), then in turn (8 more with the other 8). */
    assert_in_range(urgent_before_the_last(64, 64), 32, 64);
}

static void test_params_checked(void **state)
{
    coord_exec_t *exec = NULL;
    coord_exec_params_t none = {.n_workers = 0, .max_queued = 1};
    coord_exec_params_t negative = {.n_workers = 1, .max_queued = -1};
    (void)state;

    assert_int_equal(coord_exec_create(&none, &exec), FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(coord_exec_create(&negative, &exec), FERRY_ERR_INVALID_ARGUMENT);
    assert_null(exec);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bounded_and_refused),
        cmocka_unit_test(test_no_queue_keeps_a_lane_for_renewals),
        cmocka_unit_test(test_stop_drops_waiting_jobs_once),
        cmocka_unit_test(test_jobs_run_in_order),
        cmocka_unit_test(test_urgent_jobs_go_first_with_a_bound_of_their_own),
        cmocka_unit_test(test_urgent_jobs_do_not_starve_the_others),
        cmocka_unit_test(test_urgent_and_ordinary_jobs_take_turns),
        cmocka_unit_test(test_params_checked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
