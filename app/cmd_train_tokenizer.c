/* cmd_train_tokenizer.c - `dspark train-tokenizer`: a byte-level BPE tokenizer (tokenizer.json +
 * tokenizer_config.json with Qwen3's pre-tokenizer, special tokens and chat template) learned
 * from text files, for small targets made with `dspark pretrain`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "bpe_train.h"
#include "commands.h"
#include "progress.h"

static void on_merge(void *ctx, int done, int total) {
    (void)total;
    char extra[64];
    snprintf(extra, sizeof extra, "merges");
    progress_update(ctx, done, extra);
}

/* Reads a list file: one path per line (blank lines and lines starting with '#' skipped). */
static int read_list(const char *path, char ***out, char *err) {
    char *data = NULL;
    size_t len = 0;
    if (ds_read_file(path, &data, &len, err)) return -1;
    int n = 0, cap = 0;
    char **v = NULL;
    for (char *line = strtok(data, "\n"); line; line = strtok(NULL, "\n")) {
        if (!*line || *line == '#') continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nv = ds_realloc(v, sizeof *nv * (size_t)cap);
            if (!nv) { ds_err(err, DS_ENOMEM, "out of memory"); n = -1; break; }
            v = nv;
        }
        v[n] = ds_malloc(strlen(line) + 1);
        strcpy(v[n++], line);
    }
    ds_free(data);
    *out = v;
    return n;
}

int cmd_train_tokenizer(int argc, char **argv) {
    ArgList data = {0};
    const char *list = NULL, *out = NULL;
    int vocab = 8192, min_freq = 2;
    ArgSpec specs[] = {
        {"--data", ARG_LIST, &data, "FILE", "a text file of the corpus (repeatable)", 0, -1},
        {"--data-list", ARG_STR, &list, "F", "a file listing corpus files, one path per line", 0, -1},
        {"--vocab-size", ARG_INT, &vocab, "N", "total vocabulary: 256 bytes + merges + 5 Qwen3 special tokens (default 8192)", 262, 1 << 20},
        {"--min-frequency", ARG_INT, &min_freq, "N", "stop merging when the best pair occurs fewer times (default 2)", 1, 1e9},
        {"--out", ARG_STR, &out, "DIR", "write DIR/tokenizer.json and DIR/tokenizer_config.json", 0, -1},
    };
    int n_specs = sizeof specs / sizeof specs[0];
    int rc = args_parse("train-tokenizer", "(--data FILE ... | --data-list F) [--vocab-size N] [--min-frequency N] --out DIR", specs,
                        n_specs, argc, argv);
    if (rc) return rc == 1 ? 0 : 2;
    if (!out || (data.n == 0 && !list)) {
        fprintf(stderr, "dspark train-tokenizer: --out and at least one --data or --data-list are required (see --help)\n");
        return 2;
    }
    char err[DS_ERR_LEN];
    char **files = NULL;
    int n_files = 0, status = 1;
    BpeTrainer *bt = NULL;
    if (list && (n_files = read_list(list, &files, err)) < 0) goto fail;
    {
        int n_all = n_files + data.n;
        char **all = ds_realloc(files, sizeof *all * (size_t)(n_all ? n_all : 1));
        if (!all) { ds_err(err, DS_ENOMEM, "out of memory"); goto fail; }
        files = all;
        for (int i = 0; i < data.n; i++) {
            files[n_files + i] = ds_malloc(strlen(data.items[i]) + 1);
            strcpy(files[n_files + i], data.items[i]);
        }
        n_files = n_all;
    }
    if (bpe_trainer_new(&bt, err)) goto fail;
    Progress pg;
    progress_start(&pg, "count", n_files);
    uint64_t bytes = 0;
    for (int i = 0; i < n_files; i++) {
        char *text = NULL;
        size_t len = 0;
        if (ds_read_file(files[i], &text, &len, err)) goto fail;
        ds_status r = bpe_trainer_feed(bt, text, len, err);
        ds_free(text);
        if (r) goto fail;
        bytes += len;
        progress_update(&pg, i + 1, NULL);
    }
    size_t distinct;
    uint64_t total;
    bpe_trainer_counts(bt, &distinct, &total);
    char extra[128];
    snprintf(extra, sizeof extra, "%.1f MB, %llu pieces, %zu distinct", bytes / 1e6, (unsigned long long)total, distinct);
    progress_finish(&pg, n_files, extra);
    BpeTrainConfig cfg = {.vocab_size = vocab, .min_frequency = min_freq, .special_tokens = BPE_QWEN3_SPECIALS,
                          .n_special = BPE_QWEN3_N_SPECIALS};
    progress_start(&pg, "merge", vocab - 256 - BPE_QWEN3_N_SPECIALS);
    if (bpe_trainer_train(bt, &cfg, on_merge, &pg, err)) goto fail;
    progress_finish(&pg, bpe_trainer_n_merges(bt), NULL);
    if (bpe_trainer_save(bt, out, err)) goto fail;
    fprintf(stderr, "dspark train-tokenizer: %d merges, vocabulary %d (%d special) written to %s\n", bpe_trainer_n_merges(bt),
            256 + bpe_trainer_n_merges(bt) + BPE_QWEN3_N_SPECIALS, BPE_QWEN3_N_SPECIALS, out);
    status = 0;
    goto done;
fail:
    fprintf(stderr, "dspark train-tokenizer: %s\n", err);
done:
    for (int i = 0; i < n_files; i++) ds_free(files[i]);
    ds_free(files);
    bpe_trainer_free(bt);
    return status;
}
