/* profile.h - the SPS profile: forward steps per second of the engine's flattened target
 * forward for every verification batch size 1..max_tokens (tokens spread over several
 * requests, attending to a KV cache of ctx_len positions), plus the cost of drafting one block
 * for one request (what the draft bypass weighs against the expected gain).
 *
 * The table is cached on disk ($XDG_CACHE_HOME/dspark/ or ~/.cache/dspark/, one file per key:
 * sps-<hash>.json, written atomically), keyed by the model (directory, config.json, the size
 * and mtime of its weights, the drafter the same way) and the machine (CPU model, threads,
 * kernel path, backend). A first start without a cache measures a few sizes within a time
 * budget and interpolates the rest; profile_refine_one() measures the missing sizes later
 * (`dspark profile`, or the server when idle). Step time is interpolated linearly between
 * measured sizes, made non-decreasing (a smaller batch measured slower than a larger one met
 * interference), and extrapolated proportionally past the largest. */
#ifndef DSPARK_PROFILE_H
#define DSPARK_PROFILE_H

#include "drafter.h"
#include "qwen3.h"
#include "scheduler.h"

#define PROFILE_MAX_TOKENS 4096

typedef struct {
    int max_tokens;       /* sizes 1..max_tokens */
    int ctx_len;          /* KV positions each forward attends to */
    double *step_s;       /* [max_tokens + 1] measured seconds per forward (0 = not measured) */
    double *dense_s;      /* [max_tokens + 1] interpolated, rebuilt after every change */
    int n_measured;
    double draft_s;       /* seconds to draft one block for one request (0 = not measured) */
    int draft_block;
    char key[2048];
    char path[1200];      /* cache file */
    bool from_cache;
    /* measuring (profile_runner_*): its own state, never the engine's */
    Qwen3Model *m;
    Drafter *d;
    Qwen3State st;
    DraftState ds;
    bool have_st, have_ds;
    int n_slots;
    int32_t *tok, *pos, *slot, *rows;
} SpsProfile;

/* Sets up the table and its cache key and path (nothing measured yet). d may be NULL. */
ds_status profile_init(SpsProfile *p, Qwen3Model *m, Drafter *d, int max_tokens, int ctx_len, char *err);
void profile_free(SpsProfile *p);
/* Loads the cached table if its key matches. Returns true when loaded. */
bool profile_load_cache(SpsProfile *p);
ds_status profile_save_cache(const SpsProfile *p, char *err);
/* Measures sizes (1, 2, 4, ... and max_tokens) and the drafting cost until budget_s runs out. */
ds_status profile_measure_coarse(SpsProfile *p, double budget_s, char *err);
/* Measures the missing size in the middle of the widest gap; returns false when complete. */
bool profile_refine_one(SpsProfile *p, char *err, ds_status *rc);
/* Frees the measuring state (the table stays usable; measuring again re-creates it). */
void profile_release_runner(SpsProfile *p);
/* Interpolated seconds per forward / steps per second at `tokens` (>= 1). */
double profile_step_s(const SpsProfile *p, int tokens);
double profile_sps(void *p, int tokens); /* SpsCurve.at */
static inline SpsCurve profile_curve(SpsProfile *p) { return (SpsCurve){profile_sps, p}; }
/* Cache if present, else coarse within budget_s (then saved). Prints one line on `log`. */
ds_status profile_get(SpsProfile *p, double budget_s, void *log_file, char *err);
/* SVG plot of steps/s and tokens/s (= steps/s x size) against the size. */
ds_status profile_plot(const SpsProfile *p, const char *path, char *err);

#endif
