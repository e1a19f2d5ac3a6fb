/* cmd_profile.c - `dspark profile`: measure (or refine) the SPS profile of a target on this
 * machine, cache it, print the table and plot it (src/profile.h). */
#include <stdio.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "profile.h"

int cmd_profile(int argc, char **argv) {
    const char *model = NULL, *draft = NULL, *device = "cpu", *plot = NULL;
    int max_tokens = 256, ctx_len = 256, threads = 0;
    double budget = 15;
    bool coarse = false, fresh = false;
    ArgSpec specs[] = {
        {"--model", ARG_STR, &model, "DIR", "target model directory", 0, -1},
        {"--draft", ARG_STR, &draft, "DIR", "drafter: also measure the drafting cost per request (for the draft bypass)", 0, -1},
        {"--max-tokens", ARG_INT, &max_tokens, "N", "largest verification batch in tokens (default 256: serve's --batch-tokens)", 1, PROFILE_MAX_TOKENS},
        {"--ctx", ARG_INT, &ctx_len, "N", "KV positions each forward attends to (default 256)", 0, 1 << 20},
        {"--coarse", ARG_FLAG, &coarse, NULL, "only the coarse pass (what a first `serve` does)", 0, -1},
        {"--budget", ARG_FLOAT, &budget, "S", "time budget of the coarse pass in seconds (default 15)", 0.1, 3600},
        {"--fresh", ARG_FLAG, &fresh, NULL, "ignore the cached table and measure again", 0, -1},
        {"--plot", ARG_STR, &plot, "FILE.svg", "plot steps/s against the batch size", 0, -1},
        {"--threads", ARG_INT, &threads, "N", "CPU threads (default: all)", 1, 1024},
        {"--device", ARG_STR, &device, "DEV", "cpu (default) or cuda", 0, -1},
    };
    int n_specs = sizeof specs / sizeof specs[0];
    int rc = args_parse("profile", "--model DIR [--draft DIR] [--max-tokens N] [--plot FILE.svg]", specs, n_specs, argc, argv);
    if (rc) return rc == 1 ? 0 : 2;
    if (!model) { fprintf(stderr, "dspark profile: --model is required (see --help)\n"); return 2; }
    char err[DS_ERR_LEN];
    Backend *be = NULL;
    Qwen3Model m = {0};
    Drafter d;
    bool have_d = false;
    SpsProfile p = {0};
    int status = 1;
    if (backend_create(device, threads, &be, err) || qwen3_load(&m, model, be, err)) goto done;
    if (draft) {
        if (drafter_load(&d, draft, &m, be, err)) goto done;
        have_d = true;
    }
    if (profile_init(&p, &m, have_d ? &d : NULL, max_tokens, ctx_len, err)) goto done;
    if (!fresh && profile_load_cache(&p)) fprintf(stderr, "dspark profile: %d of %d sizes cached in %s\n", p.n_measured, max_tokens, p.path);
    double t0 = ds_now();
    if (p.n_measured == 0 || (have_d && !(p.draft_s > 0))) {
        if (profile_measure_coarse(&p, budget, err)) goto done;
        fprintf(stderr, "dspark profile: coarse pass: %d sizes in %.1fs\n", p.n_measured, ds_now() - t0);
        if (profile_save_cache(&p, err)) goto done;
    }
    if (!coarse) {
        ds_status mrc;
        int k = 0;
        double t1 = ds_now(), t_save = ds_now();
        while (profile_refine_one(&p, err, &mrc)) {
            if (++k % 16 == 0) fprintf(stderr, "\rdspark profile: refining, %d of %d sizes", p.n_measured, max_tokens);
            if (ds_now() - t_save > 10) { if (profile_save_cache(&p, err)) goto done; t_save = ds_now(); }
        }
        if (mrc) goto done;
        if (k) fprintf(stderr, "\rdspark profile: refined %d sizes in %.1fs            \n", k, ds_now() - t1);
        if (profile_save_cache(&p, err)) goto done;
    }
    printf("# SPS profile of %s (ctx %d)%s, cache %s\n", model, ctx_len, have_d ? "" : "", p.path);
    if (have_d) printf("# drafting one block (%d slots) for one request: %.3f ms\n", p.draft_block, p.draft_s * 1e3);
    printf("%8s %12s %12s %10s\n", "tokens", "steps/s", "tokens/s", "measured");
    for (int b = 1; b <= max_tokens; b++) {
        bool show = b <= 8 || b == max_tokens || (b & (b - 1)) == 0 || b % 32 == 0;
        if (show) printf("%8d %12.2f %12.1f %10s\n", b, profile_sps(&p, b), b * profile_sps(&p, b), p.step_s[b] > 0 ? "yes" : "interp.");
    }
    if (plot && profile_plot(&p, plot, err)) goto done;
    status = 0;
done:
    if (status) fprintf(stderr, "dspark profile: %s\n", err);
    profile_free(&p);
    if (have_d) drafter_free(&d);
    if (m.layers) qwen3_free(&m);
    if (be) be->destroy(be);
    return status;
}
