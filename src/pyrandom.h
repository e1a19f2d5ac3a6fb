/* pyrandom.h - CPython's random.Random (MT19937 seeded by init_by_array) and its shuffle, so
 * `dspark eval` caps a dataset to exactly the rows DeepSpec's eval.py keeps
 * (random.Random(seed).shuffle(rows); rows[:cap]; digest §3.4). Integer seeds >= 0 only. */
#ifndef DSPARK_PYRANDOM_H
#define DSPARK_PYRANDOM_H

#include <stdint.h>

typedef struct { uint32_t mt[624]; int mti; } PyRandom;

void pyrandom_seed(PyRandom *r, uint64_t seed);
uint32_t pyrandom_u32(PyRandom *r);
/* random.Random._randbelow(n) for 1 <= n < 2^32 (getrandbits(k) rejection sampling) */
uint32_t pyrandom_below(PyRandom *r, uint32_t n);
/* random.Random(seed).shuffle(x) applied to an index permutation x[0..n) */
void pyrandom_shuffle(PyRandom *r, int32_t *x, int n);

#endif
