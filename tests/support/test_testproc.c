/*
 * test_testproc.c: the test-support helpers themselves: free ports,
 * waiting with a deadline, temp directories, and child processes that are
 * stopped, killed, paused and resumed.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testproc.h"

static void test_free_port_is_bindable(void **state)
{
    (void)state;
    int a = test_free_port();
    int b = test_free_port();
    assert_true(a > 0 && a < 65536);
    assert_true(b > 0 && b < 65536);
}

static bool count_to_three(void *arg)
{
    int *n = arg;
    return ++*n >= 3;
}

static bool never(void *arg)
{
    (void)arg;
    return false;
}

static void test_wait_for_deadline(void **state)
{
    (void)state;
    int n = 0;
    assert_true(test_wait_for(count_to_three, &n, 5000));
    assert_int_equal(n, 3);
    long long start = test_now_ms();
    assert_false(test_wait_for(never, NULL, 50));
    assert_true(test_now_ms() - start >= 50);
}

static void test_tmpdir(void **state)
{
    (void)state;
    char *dir = test_tmpdir_create("selftest");
    assert_non_null(dir);
    char path[4200];
    snprintf(path, sizeof(path), "%s/sub", dir);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(path, sizeof(path), "%s/sub/file", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
    test_tmpdir_remove(dir);
    struct stat st;
    assert_int_not_equal(stat(dir, &st), 0);
    free(dir);
}

static bool log_has_hello(void *arg)
{
    const test_proc_t *proc = arg;
    char buf[64] = {0};
    FILE *f = fopen(proc->log_path, "r");
    if (f == NULL) {
        return false;
    }
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    return n > 0 && strstr(buf, "hello") != NULL;
}

static void test_proc_stop_pause_kill(void **state)
{
    (void)state;
    char *dir = test_tmpdir_create("selftest");
    char log[4200];
    snprintf(log, sizeof(log), "%s/child.log", dir);
    char *argv[] = {"sh", "-c", "echo hello; exec sleep 30", NULL};
    test_proc_t proc;
    assert_int_equal(test_proc_start(&proc, argv, log), 0);
    assert_true(test_wait_for(log_has_hello, &proc, 5000));
    assert_true(test_proc_running(&proc));
    assert_int_equal(test_proc_pause(&proc), 0);
    assert_int_equal(test_proc_resume(&proc), 0);
    int status = test_proc_stop(&proc, 5000);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM);
    assert_false(test_proc_running(&proc));
    test_proc_cleanup(&proc);

    /* A child that ignores SIGTERM is killed after the deadline. */
    char *term_deaf[] = {"sh", "-c", "trap '' TERM; echo hello; exec sleep 30", NULL};
    snprintf(log, sizeof(log), "%s/term_deaf.log", dir);
    assert_int_equal(test_proc_start(&proc, term_deaf, log), 0);
    assert_true(test_wait_for(log_has_hello, &proc, 5000)); /* the trap is set */
    status = test_proc_stop(&proc, 200);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    test_proc_cleanup(&proc);

    char *quick[] = {"sh", "-c", "exit 3", NULL};
    assert_int_equal(test_proc_start(&proc, quick, log), 0);
    assert_true(test_proc_wait(&proc, 5000));
    assert_true(WIFEXITED(proc.status) && WEXITSTATUS(proc.status) == 3);
    test_proc_cleanup(&proc);

    char *missing[] = {"no-such-program-ferry", NULL};
    assert_int_equal(test_proc_start(&proc, missing, log), -1);
    test_tmpdir_remove(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_free_port_is_bindable),
        cmocka_unit_test(test_wait_for_deadline),
        cmocka_unit_test(test_tmpdir),
        cmocka_unit_test(test_proc_stop_pause_kill),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
