/* The crash-kernel lab's mmap baseline: copy FILE (/proc/vmcore) through read-only mmap
 * windows of 4 MiB into one buffer, as makedumpfile reads it; prints bytes and seconds.
 * Built static on the host (gcc -static -O2); a baseline, never shipped. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define WINDOW (4L << 20)

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: mmapcopy FILE\n");
        return 2;
    }
    int fd = open(argv[1], O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        perror(argv[1]);
        return 1;
    }
    static char buf[WINDOW];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    unsigned long sum = 0;
    for (off_t off = 0; off < st.st_size; off += WINDOW) {
        size_t len = st.st_size - off < WINDOW ? (size_t)(st.st_size - off) : WINDOW;
        char *map = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, off);
        if (map == MAP_FAILED) {
            perror("mmap");
            return 1;
        }
        memcpy(buf, map, len);
        sum += (unsigned char)buf[len - 1];  /* the copy is used: not optimised away */
        munmap(map, len);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%ld %.6f %lu\n", (long)st.st_size,
           (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9, sum);
    return 0;
}
