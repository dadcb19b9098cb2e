/*
 * rpc_testserver.c: ferry-rpc-testserver, the test server of rpc_fixture.h
 * as a process, for clients in other languages. Prints its port on stdout,
 * serves until stdin closes (or reads "quit"), shuts down and exits 0.
 * Commands on stdin, one per line: "not-serving SERVICE", "serving SERVICE"
 * (SERVICE "-" is the server as a whole); each is answered "ok".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/v1/coordinator.pb-c.h"
#include "rpc_fixture.h"

static void run_commands(fixture_t *f)
{
    char line[256], service[200];

    while (fgets(line, sizeof(line), stdin) != NULL) {
        if (strncmp(line, "quit", 4) == 0) {
            break;
        }
        if (sscanf(line, "not-serving %199s", service) == 1) {
            rpc_server_set_serving(f->server, strcmp(service, "-") == 0 ? "" : service, false);
        } else if (sscanf(line, "serving %199s", service) == 1) {
            rpc_server_set_serving(f->server, strcmp(service, "-") == 0 ? "" : service, true);
        } else {
            printf("unknown command\n");
            fflush(stdout);
            continue;
        }
        printf("ok\n");
        fflush(stdout);
    }
}

int main(void)
{
    fixture_t f;

    if (fixture_start(&f, 0) != 0) {
        fprintf(stderr, "ferry-rpc-testserver: cannot start\n");
        return 1;
    }
    printf("%d\n", f.port);
    fflush(stdout);
    run_commands(&f);
    rpc_server_shutdown(f.server, 1000);
    fixture_stop(&f);
    return 0;
}
