/*
 * replay.c: main() for a fuzz target in the normal build. Runs the target's
 * LLVMFuzzerTestOneInput once on every regular file of each directory (or on
 * each file) named on the command line: the committed seed corpus and every
 * regression input (crash-*) run in each `make test` and `make asan`.
 *
 * Each input is copied into a buffer of exactly its size, as libFuzzer does,
 * so a read past the end is caught under ASan. Exits 1 when an argument
 * cannot be read or names an empty directory (a missing corpus must not pass
 * as "nothing crashed").
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

static int replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    struct stat st;
    uint8_t *data;

    if (f == NULL || fstat(fileno(f), &st) != 0) {
        fprintf(stderr, "replay: cannot open %s: %s\n", path, strerror(errno));
        if (f != NULL) {
            fclose(f);
        }
        return -1;
    }
    /* One spare byte so that an empty file still gets a non-NULL buffer. */
    data = malloc((size_t)st.st_size + 1);
    if (data == NULL || fread(data, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
        fprintf(stderr, "replay: cannot read %s\n", path);
        free(data);
        fclose(f);
        return -1;
    }
    fclose(f);
    LLVMFuzzerTestOneInput(data, (size_t)st.st_size);
    free(data);
    return 0;
}

static int replay_dir(const char *dir, size_t *count_p)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[4096];
    struct stat st;

    if (d == NULL) {
        fprintf(stderr, "replay: cannot open %s: %s\n", dir, strerror(errno));
        return -1;
    }
    while ((e = readdir(d)) != NULL) {
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
            continue;
        }
        if (replay_file(path) != 0) {
            closedir(d);
            return -1;
        }
        (*count_p)++;
    }
    closedir(d);
    return 0;
}

int main(int argc, char **argv)
{
    struct stat st;

    if (argc < 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...\n", argv[0]);
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        size_t count = 0;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            return 1;
        }
        if (S_ISDIR(st.st_mode)) {
            if (replay_dir(argv[i], &count) != 0) {
                return 1;
            }
        } else if (replay_file(argv[i]) == 0) {
            count = 1;
        } else {
            return 1;
        }
        if (count == 0) {
            fprintf(stderr, "replay: %s holds no inputs\n", argv[i]);
            return 1;
        }
        printf("replay: %zu inputs from %s, no crash\n", count, argv[i]);
    }
    return 0;
}
