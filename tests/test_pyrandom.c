/* test_pyrandom.c - random.Random(seed).shuffle reproduced bit for bit: the lists in
 * tests/data/pyrandom_shuffle.txt were produced by CPython 3.11 (`seed n perm...` per line):
 *   x = list(range(n)); random.Random(seed).shuffle(x)
 * for DeepSpec's seed 980406 and the row counts of its capped sets (gsm8k 1319,
 * livecodebench 1055, arena-hard-v2 750, mbpp 257), plus seeds 0, 42 and 2^40+5.
 * ctest: labels=unit */
#include "pyrandom.h"
#include "test.h"

static void test_shuffle_matches_python(void) {
    FILE *f = fopen(test_data("pyrandom_shuffle.txt"), "r");
    CHECK(f != NULL);
    if (!f) return;
    unsigned long long seed;
    int n, lines = 0;
    while (fscanf(f, "%llu %d", &seed, &n) == 2) {
        int32_t *x = malloc(sizeof(int32_t) * n);
        for (int i = 0; i < n; i++) x[i] = i;
        PyRandom r;
        pyrandom_seed(&r, seed);
        pyrandom_shuffle(&r, x, n);
        int bad = 0;
        for (int i = 0; i < n; i++) {
            int v;
            if (fscanf(f, "%d", &v) != 1 || v != x[i]) bad++;
        }
        CHECK_MSG(bad == 0, "seed %llu n %d: %d positions differ", seed, n, bad);
        free(x);
        lines++;
    }
    fclose(f);
    CHECK(lines == 7);
    /* must fail: another seed gives another order */
    int32_t a[50], b[50];
    for (int i = 0; i < 50; i++) a[i] = b[i] = i;
    PyRandom r;
    pyrandom_seed(&r, 980406);
    pyrandom_shuffle(&r, a, 50);
    pyrandom_seed(&r, 980407);
    pyrandom_shuffle(&r, b, 50);
    CHECK(memcmp(a, b, sizeof a) != 0);
}

int main(void) {
    RUN(test_shuffle_matches_python);
    return test_summary();
}
